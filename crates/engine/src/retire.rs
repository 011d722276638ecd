//! Retiring a patch region instead of unmapping it.
//!
//! A region replaced by a higher level, or rolled back, may still be on some
//! stack the stack check cannot see (a `ucontext` coroutine, a fiber, a green
//! thread suspended inside replacement code). Unmapping it would crash that
//! stack when it resumes, so the region stays mapped read+execute for the life
//! of the process; only its header changes, to say it is retired. That mark is
//! written in the same stop as the site switch that retires it, after the
//! sites, so the process never shows sites and header disagreeing.
//!
//! Retired regions cost address space and memory, so a per-target cap
//! ([`MAX_RETIRED_REGIONS`], [`MAX_RETIRED_BYTES`]) refuses a transition that
//! would retire one more; restarting the process reclaims them.

use crate::error::EngineError;
use crate::procfs::{Mapping, ProcessMemory};
use crate::region::{RegionHeader, Retirement};
use crate::status::FoundRegion;
use crate::transition::SiteWrite;

/// At most this many retired regions of one target in one process.
pub const MAX_RETIRED_REGIONS: usize = 16;
/// At most this many bytes of retired regions of one target in one process.
pub const MAX_RETIRED_BYTES: u64 = 64 << 20;

/// Retired regions of one target in one process: how many, how large.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetiredTotal {
    pub regions: usize,
    pub bytes: u64,
}

/// What is retired already for target `build_id` among `regions`.
pub(crate) fn retired_total(regions: &[FoundRegion], build_id: &str) -> RetiredTotal {
    regions.iter().map(|r| &r.header.record).filter(|r| r.build_id == build_id && r.retired.is_some()).fold(
        RetiredTotal::default(),
        |t, r| RetiredTotal { regions: t.regions + 1, bytes: t.bytes.saturating_add(r.region_size) },
    )
}

/// Refuses to retire `next` (one more region of its target) past the cap.
pub(crate) fn check_cap(pid: i32, regions: &[FoundRegion], next: &RegionHeader) -> Result<(), EngineError> {
    let now = retired_total(regions, &next.record.build_id);
    let bytes = now.bytes.saturating_add(next.record.region_size);
    if now.regions < MAX_RETIRED_REGIONS && bytes <= MAX_RETIRED_BYTES {
        return Ok(());
    }
    Err(EngineError::RetiredCap {
        pid,
        target: next.record.target_file.clone(),
        regions: now.regions,
        bytes: now.bytes,
        max_regions: MAX_RETIRED_REGIONS,
        max_bytes: MAX_RETIRED_BYTES,
    })
}

/// The write that marks `header`'s region retired: its header rewritten in
/// place, for the transition to apply after the sites. The region's first
/// mapping (its read-only header pages) must hold the longer header.
pub fn mark(
    pid: i32,
    maps: &[Mapping],
    mem: &ProcessMemory,
    header: &RegionHeader,
    retirement: Retirement,
) -> Result<SiteWrite, EngineError> {
    let start = header.record.region_start;
    let mut retired = header.clone();
    retired.record.retired = Some(retirement);
    let new = retired.encode();
    let room = maps.iter().find(|m| m.start == start).map_or(0, Mapping::len);
    if new.len() as u64 > room {
        return Err(EngineError::BadRegion {
            addr: start,
            problem: format!("no room in its header pages ({room} bytes) to mark it retired"),
        });
    }
    let old = mem.read_vec(start, new.len()).map_err(|e| EngineError::proc_access(pid, "read patch region", e))?;
    Ok(SiteWrite { address: start, old, new })
}
