//! The transition: stop every thread, prove none is inside code being
//! replaced, switch the sites, resume. Busy? Wait for the busy frame to
//! return (`retbreak`) where its return address is known, else resume, back
//! off and try again; either way until the deadline.

use crate::error::EngineError;
use crate::procfs::ProcessMemory;
use crate::retbreak;
use crate::stack::{BusyRange, ReturnPoint, StackChecker};
use crate::threads::StoppedProcess;
use std::time::{Duration, Instant};

/// One site switch: write `new` at `address`, where `old` is now.
#[derive(Debug, Clone)]
pub struct SiteWrite {
    pub address: u64,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TransitionReport {
    /// First thread stopped to last thread resumed, in the attempt that switched.
    pub pause_us: u64,
    pub threads: usize,
    /// Attempts that found a thread busy before the one that switched.
    pub retries: u32,
    /// Threads whose unwind was unsure and whose raw stack was scanned instead.
    pub fallback_scans: u32,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Makes the kernel give the process its own copy of every page a site is on,
/// by writing the bytes already there. Done before the stop, so the pause
/// does not pay for copying pages; the process sees identical bytes.
pub fn prepare(mem: &ProcessMemory, writes: &[SiteWrite]) -> Result<(), EngineError> {
    for w in writes {
        mem.write(w.address, &w.old).map_err(|e| EngineError::io(format!("prepare site 0x{:x}", w.address), e))?;
    }
    Ok(())
}

pub fn run(
    pid: i32,
    mem: &ProcessMemory,
    checker: &mut StackChecker,
    busy: &[BusyRange],
    writes: &[SiteWrite],
    timeout: Duration,
) -> Result<TransitionReport, EngineError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut retries = 0u32;
    let mut held = Vec::new();
    // Threads caught at their return and kept stopped (retbreak).
    let mut parked_tids: Vec<i32> = Vec::new();
    loop {
        let stopped = StoppedProcess::stop_holding(pid, std::mem::take(&mut held))?;
        let Some((tid, function)) = holder(pid, mem, checker, busy, &stopped)? else {
            let threads = stopped.threads.len();
            let written = switch_sites(mem, writes);
            let pause = stopped.resume();
            written?;
            return Ok(TransitionReport {
                pause_us: pause.as_micros() as u64,
                threads,
                retries,
                fallback_scans: checker.fallback_scans,
            });
        };
        let busy_error = |retries: u32| EngineError::Busy {
            tid,
            function: function.clone(),
            waited_ms: started.elapsed().as_millis() as u64,
            attempts: retries + 1,
        };
        retries += 1;
        match return_point(pid, mem, checker, busy, &stopped, tid) {
            Some((tail, point)) => {
                tracing::debug!(tid, %function, ret = point.ret, "waiting for the busy frame to return");
                match retbreak::wait_for_return(stopped, tid, point, &tail, mem, deadline, &parked_tids)? {
                    Some(threads) => {
                        parked_tids = threads.iter().map(|t| t.tid).collect();
                        held = threads;
                        continue;
                    }
                    None if Instant::now() >= deadline => return Err(busy_error(retries - 1)),
                    // No room for a trampoline: retry as without one.
                    None => parked_tids.clear(),
                }
            }
            None => {
                parked_tids.clear();
                drop(stopped);
            }
        }
        if started.elapsed() + backoff > timeout {
            return Err(busy_error(retries - 1));
        }
        tracing::debug!(tid, %function, "thread busy in a function being replaced; retrying");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The first thread found in busy code (its stack or a user-level stack), if any.
fn holder(
    pid: i32,
    mem: &ProcessMemory,
    checker: &mut StackChecker,
    busy: &[BusyRange],
    stopped: &StoppedProcess,
) -> Result<Option<(i32, String)>, EngineError> {
    let on_thread = stopped.threads.iter().find_map(|t| checker.busy_in(mem, &t.regs, busy).map(|name| (t.tid, name)));
    match on_thread {
        Some(found) => Ok(Some(found)),
        None => in_user_level_stack(pid, mem, checker, stopped),
    }
}

/// Where thread `tid`'s outermost busy frame returns to, with the unused
/// page tail its trampoline goes in; `None` if either is missing (a user-level
/// stack, an inexact unwind, no tail): then the transition retries instead.
fn return_point(
    pid: i32,
    mem: &ProcessMemory,
    checker: &mut StackChecker,
    busy: &[BusyRange],
    stopped: &StoppedProcess,
    tid: i32,
) -> Option<(std::ops::Range<u64>, ReturnPoint)> {
    let thread = stopped.threads.iter().find(|t| t.tid == tid)?;
    let point = checker.return_point(mem, &thread.regs, busy)?;
    let maps = crate::procfs::maps(pid).ok()?;
    Some((crate::stub::tail(pid, &maps, mem)?, point))
}

/// A return address into busy code on a user-level stack (a coroutine's or
/// fiber's): anywhere in writable memory with `--scan-memory`, else in the
/// stacks the process declares, if it does.
fn in_user_level_stack(
    pid: i32,
    mem: &ProcessMemory,
    checker: &mut StackChecker,
    stopped: &StoppedProcess,
) -> Result<Option<(i32, String)>, EngineError> {
    let Some(scanner) = checker.memory.as_mut() else { return Ok(None) };
    let sps: Vec<u64> = stopped.threads.iter().map(|t| t.regs.rsp).collect();
    let hit = scanner.find(pid, mem, &sps)?;
    let source = scanner.source();
    Ok(hit.map(|h| (pid, format!("{} (a return address at 0x{:x} {source})", h.name, h.at))))
}

/// Writes every site; if one fails, puts back those already written so the
/// process is never left half switched.
fn switch_sites(mem: &ProcessMemory, writes: &[SiteWrite]) -> Result<(), EngineError> {
    for (i, w) in writes.iter().enumerate() {
        if let Err(e) = mem.write(w.address, &w.new) {
            for done in &writes[..i] {
                let _ = mem.write(done.address, &done.old);
            }
            return Err(EngineError::io(format!("write site 0x{:x}", w.address), e));
        }
    }
    Ok(())
}
