//! The hotpatch's own callbacks (include/hotpatch.h), called inside the
//! process: one thread is borrowed as for an injected syscall, made to call
//! the function with its return address pointing at the injection stub's
//! call return, and taken back at the stub's syscall that follows (so that,
//! were we killed meanwhile, the thread would still come back by itself, as
//! from an injected syscall). Its registers (general, x87/SSE/AVX) and the
//! 64 KiB of stack below its red zone (where the callback's frames go) are
//! restored exactly.
//!
//! The other threads keep running meanwhile. Stopping them would deadlock a
//! callback that needs a lock one of them holds (malloc's, the program's
//! own); running, they release it. What a callback cannot wait for is
//! something the borrowed thread itself holds, as for a signal handler; a
//! callback that does not return within [`CALLBACK_TIMEOUT`] is interrupted
//! and reported.

use crate::error::EngineError;
use crate::inject::Injector;
use crate::procfs::{Mapping, ProcessMemory};
use crate::ptrace::{self, Stop};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Names a payload may define, in the order of an apply and a rollback.
pub const PRE_APPLY: &str = "hotpatch_pre_apply";
pub const POST_APPLY: &str = "hotpatch_post_apply";
pub const PRE_ROLLBACK: &str = "hotpatch_pre_rollback";
pub const POST_ROLLBACK: &str = "hotpatch_post_rollback";
pub const NAMES: [&str; 4] = [PRE_APPLY, POST_APPLY, PRE_ROLLBACK, POST_ROLLBACK];

/// How long a callback may run before it is interrupted.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A post callback that did not complete: the transition stands (post
/// callbacks cannot undo it), so this is reported, not an error.
#[derive(Debug, Clone, Serialize)]
pub struct CallbackProblem {
    pub callback: String,
    pub problem: String,
}

/// `NT_X86_XSTATE`: the whole extended register state (x87, SSE, AVX...).
const NT_X86_XSTATE: libc::c_int = 0x202;
const XSTATE_MAX: usize = 16 << 10;
/// EFLAGS.DF, which the ABI wants clear at a call.
const DIRECTION_FLAG: u64 = 1 << 10;

/// Calls the function at `address` (`int f(void)` or `void f(void)`) in one
/// thread of process `pid` and returns its `int` result.
pub fn call(pid: i32, maps: &[Mapping], mem: &ProcessMemory, name: &str, address: u64) -> Result<i32, EngineError> {
    let started = Instant::now();
    let mut inj = Injector::attach(pid, maps, mem)?;
    let tid = inj.tid();
    // Without it the callback could change registers the thread relies on.
    let fpu = save_extended(tid).map_err(|source| EngineError::Ptrace { tid, op: "getregset", source })?;
    let mut held = Vec::new();
    let stack = StackWindow::save(mem, maps, inj.saved_regs().rsp);
    let outcome = run(pid, &mut inj, address, &mut held);
    if let Some(window) = stack {
        window.restore(pid, mem);
    }
    let restored = restore_extended(tid, &fpu);
    let finished = inj.finish();
    for sig in held {
        // SAFETY: plain syscall; re-queues a signal we held back.
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
    }
    let result = outcome.map_err(|problem| match problem {
        Failure::Engine(e) => e,
        Failure::Callback(problem) => EngineError::Callback { pid, callback: name.to_owned(), problem },
    })?;
    restored.map_err(|source| EngineError::Ptrace { tid, op: "setregset", source })?;
    finished?;
    tracing::debug!(
        pid,
        tid,
        callback = name,
        returned = result,
        us = started.elapsed().as_micros() as u64,
        "callback ran"
    );
    Ok(result)
}

enum Failure {
    Engine(EngineError),
    Callback(String),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Failure {
        Failure::Engine(e)
    }
}

fn run(pid: i32, inj: &mut Injector<'_>, address: u64, held: &mut Vec<i32>) -> Result<i32, Failure> {
    let tid = inj.tid();
    let ptrace_err = |op: &'static str| move |source| Failure::Engine(EngineError::Ptrace { tid, op, source });
    let entry_sp = inj.prepare_call()?;
    let mut regs = inj.saved_regs();
    regs.rsp = entry_sp;
    regs.rip = address;
    regs.rax = 0;
    regs.orig_rax = u64::MAX;
    regs.eflags &= !DIRECTION_FLAG;
    ptrace::set_regs(tid, &regs).map_err(ptrace_err("setregs"))?;
    // Syscall stops are how its return (the stub's syscall) is seen.
    let go = |tid: i32| ptrace::resume_to_syscall(tid, 0);
    go(tid).map_err(ptrace_err("syscall"))?;
    let deadline = Instant::now() + CALLBACK_TIMEOUT;
    loop {
        let stop = ptrace::wait_nohang(tid).map_err(ptrace_err("wait"))?;
        match stop {
            None if Instant::now() >= deadline => return Err(interrupt(tid, held)),
            None => std::thread::sleep(Duration::from_millis(1)),
            Some(Stop::Exited) => return Err(Failure::Engine(EngineError::ProcessExited(pid))),
            Some(Stop::Syscall) => {
                let now = ptrace::get_regs(tid).map_err(ptrace_err("getregs"))?;
                if inj.is_call_return(&now) {
                    inj.complete_call()?;
                    return Ok(now.rdi as u32 as i32);
                }
                // A syscall of the callback's own: on to its next stop.
                go(tid).map_err(ptrace_err("syscall"))?;
            }
            Some(Stop::Signal(libc::SIGSEGV)) => {
                let now = ptrace::get_regs(tid).map_err(ptrace_err("getregs"))?;
                return Err(Failure::Callback(format!(
                    "crashed (SIGSEGV at 0x{:x}); its thread was restored",
                    now.rip
                )));
            }
            Some(Stop::Signal(sig)) => {
                held.push(sig);
                go(tid).map_err(ptrace_err("syscall"))?;
            }
            Some(Stop::Trap) => {
                let now = ptrace::get_regs(tid).map_err(ptrace_err("getregs"))?;
                return Err(Failure::Callback(format!("trapped at 0x{:x}; its thread was restored", now.rip)));
            }
            // A group stop or our own interrupt: keep it running.
            Some(Stop::Interrupted) => go(tid).map_err(ptrace_err("syscall"))?,
        }
    }
}

/// Stops a callback that ran past its time, so its thread can be restored.
/// Any stop will do: a signal that came first stops it too (and is held).
fn interrupt(tid: i32, held: &mut Vec<i32>) -> Failure {
    let stopped = ptrace::interrupt(tid).and_then(|()| ptrace::wait(tid)).map(|stop| {
        if let Stop::Signal(sig) = stop {
            held.push(sig);
        }
    });
    match stopped {
        Ok(()) => Failure::Callback(format!(
            "did not return within {} s; interrupted and its thread restored (what it did so far stays)",
            CALLBACK_TIMEOUT.as_secs()
        )),
        Err(source) => Failure::Engine(EngineError::Ptrace { tid, op: "interrupt", source }),
    }
}

/// How much of the borrowed thread's unused stack (below its red zone) is
/// saved before a callback and put back after: the callback's own frames
/// leave no trace there.
const STACK_WINDOW: u64 = 64 << 10;
/// The x86-64 red zone below the stack pointer.
const RED_ZONE: u64 = 128;

/// The bytes below a thread's stack pointer that a callback's frames may
/// overwrite, within the stack's mapping.
struct StackWindow {
    start: u64,
    bytes: Vec<u8>,
}

impl StackWindow {
    fn save(mem: &ProcessMemory, maps: &[Mapping], rsp: u64) -> Option<StackWindow> {
        // The red zone may hold the interrupted function's data: left alone.
        let end = rsp.checked_sub(RED_ZONE)?;
        let mapping = maps.iter().find(|m| m.contains(end.saturating_sub(1)))?;
        let start = end.saturating_sub(STACK_WINDOW).max(mapping.start);
        let bytes = mem.read_vec(start, (end - start) as usize).ok()?;
        Some(StackWindow { start, bytes })
    }

    fn restore(self, pid: i32, mem: &ProcessMemory) {
        if let Err(e) = mem.write(self.start, &self.bytes) {
            tracing::warn!(pid, error = %e, "cannot restore the stack below the borrowed thread's");
        }
    }
}

/// The thread's extended register state, which a called function may change
/// (xmm registers are caller-saved) and `PTRACE_GETREGS` does not cover.
fn save_extended(tid: i32) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: the kernel writes at most iov_len bytes into buf and shrinks iov_len.
    let ret = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE as usize, &mut iov as *mut _) };
    if ret == -1 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(iov.iov_len);
    Ok(buf)
}

fn restore_extended(tid: i32, state: &[u8]) -> std::io::Result<()> {
    let mut copy = state.to_vec();
    let mut iov = libc::iovec { iov_base: copy.as_mut_ptr().cast(), iov_len: copy.len() };
    // SAFETY: the kernel reads iov_len bytes from copy.
    let ret = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE as usize, &mut iov as *mut _) };
    if ret == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The callbacks a linked payload defines, by name, at their addresses.
pub fn defined(symbols: &std::collections::BTreeMap<String, u64>) -> std::collections::BTreeMap<String, u64> {
    NAMES.iter().filter_map(|&n| symbols.get(n).map(|&a| (n.to_owned(), a))).collect()
}

/// Runs the pre callback `name` of a region, if it has one: a non-zero
/// return, a crash or a timeout refuses what is about to happen (`what`).
pub fn pre(
    pid: i32,
    maps: &[Mapping],
    mem: &ProcessMemory,
    header: &crate::region::RegionHeader,
    name: &str,
    what: &str,
) -> Result<(), EngineError> {
    let Some(address) = address_in(header, name)? else { return Ok(()) };
    match call(pid, maps, mem, name, address)? {
        0 => Ok(()),
        code => Err(EngineError::Callback {
            pid,
            callback: name.to_owned(),
            problem: format!("refused the {what} (returned {code}); nothing was changed"),
        }),
    }
}

/// Runs the post callback `name` of a region, if it has one. It cannot undo
/// the transition: what went wrong is returned for the report.
pub fn post(
    pid: i32,
    mem: &ProcessMemory,
    header: &crate::region::RegionHeader,
    name: &str,
) -> Option<CallbackProblem> {
    let problem = |problem: String| Some(CallbackProblem { callback: name.to_owned(), problem });
    let address = match address_in(header, name) {
        Ok(Some(a)) => a,
        Ok(None) => return None,
        Err(e) => return problem(e.to_string()),
    };
    // The maps changed with the transition (a region mapped, pages made private).
    let maps = match crate::procfs::maps(pid) {
        Ok(m) => m,
        Err(e) => return problem(format!("cannot read the maps: {e}")),
    };
    match call(pid, &maps, mem, name, address) {
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(pid, callback = name, error = %e, "post callback did not complete");
            problem(e.to_string())
        }
    }
}

/// Where a region's callback is; the header is read from the process, so an
/// address outside the region's own code is refused rather than called.
fn address_in(header: &crate::region::RegionHeader, name: &str) -> Result<Option<u64>, EngineError> {
    let Some(&address) = header.callbacks.get(name) else { return Ok(None) };
    if !header.range().contains(&address) {
        return Err(EngineError::BadRegion {
            addr: header.record.region_start,
            problem: format!("callback {name} at 0x{address:x} is outside the region"),
        });
    }
    Ok(Some(address))
}
