//! The engine: patches running Linux processes (executables and shared
//! libraries) in memory and rolls them back, with a pause of microseconds.
//!
//! Module map, in the order an apply walks through them:
//! - [`procfs`]: threads, mappings and memory of a process; [`access`]: why the kernel refused one.
//! - [`modules`]: the ELF objects a process maps, by build-id, with their load bias.
//! - [`resolve`]: names the payload references, to addresses in the process.
//! - [`scope`]: the process's lookup order (its `link_map` chain), as ld.so binds.
//! - [`tls`]: module ids and offsets of the process's thread-local variables.
//! - [`region`]: the patch region's self-describing header and its placement within ±2 GiB.
//! - [`retire`]: regions replaced or rolled back stay mapped, marked retired, under a cap.
//! - [`inject`] / [`mapping`]: syscalls run in a borrowed thread to map and unmap a region;
//!   [`stub`]: the code they run from, which brings the thread back if we are killed.
//! - [`threads`] / [`ptrace`]: stopping and resuming every thread; the pause is measured here.
//! - [`stack`]: the stack check (eh_frame unwinding, raw-stack fallback).
//! - [`memscan`]: the opt-in scan of writable memory for user-level stacks (`--scan-memory`).
//! - [`transition`]: stop, check, switch sites, resume; retry while busy.
//! - [`retbreak`]: return breakpoints: wait for a busy frame to return, then switch.
//! - [`shadow`] / [`callback`]: the shadow variable table a level adopts from the one it
//!   replaces, and the hotpatch's own callbacks, run in a borrowed thread.
//! - [`plan`]: what an apply can know without the process stopped: the target's
//!   sites and symbols and the payload's layout once per hotpatch, the image linked
//!   once per layout; [`plan_cache`] keeps them across processes, bounded.
//! - [`execute`]: the steps of an apply that read or change the process around a plan.
//! - [`startup`]: patch at exec: a new process led to its entry point and held there.
//! - [`patch`]: apply and rollback, end to end. [`status`]: what is applied, read from the process.
//!
//! Invariant: every step before the sites are written changes nothing the
//! process can observe, and any failure before then undoes what it mapped.
//!
//! Symbols of a stripped target come from its separate debug file, found by
//! build-id as `ROOT/.build-id/ab/cdef....debug` under each debug root: those
//! named by the environment variable `HOTPATCH_DEBUG_DIRS` (`:`-separated,
//! searched first), then `/usr/lib/debug`. A debug file whose own build-id is
//! not the target's is ignored.

pub mod access;
pub mod callback;
pub mod error;
mod execute;
pub mod inject;
pub mod mapping;
pub mod memscan;
pub mod modules;
pub mod patch;
pub mod plan;
pub mod plan_cache;
pub mod procfs;
pub mod ptrace;
pub mod region;
pub mod resolve;
pub mod retbreak;
pub mod retire;
pub mod scope;
pub mod shadow;
pub mod stack;
pub mod startup;
pub mod status;
pub mod stub;
pub mod threads;
pub mod tls;
pub mod transition;

pub use error::EngineError;
pub use memscan::{MAX_SCAN_BYTES, ScanReport};
pub use patch::{
    ApplyOptions, ApplyReport, DEBUG_DIRS_ENV, ReplacedPatch, RollbackReport, apply, apply_planned, debug_file,
    debug_roots, rollback,
};
pub use plan_cache::{CacheStats, PlanCache, PlanUse};
pub use region::{PatchRecord, Retirement};
pub use retire::{MAX_RETIRED_BYTES, MAX_RETIRED_REGIONS, RetiredTotal};
pub use status::{
    AppliedPatch, RunningTarget, processes_with_target, retired_total, running_targets, status, status_all,
};
pub use threads::stop_resume_floor;
