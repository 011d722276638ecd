//! Stopping every thread of a process, and letting them all go again.
//!
//! The pause a hotpatch costs is measured here: from the first thread
//! interrupted to the last thread let go.

use crate::error::EngineError;
use crate::procfs;
use crate::ptrace::{self, Regs, Stop};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub struct StoppedThread {
    pub tid: i32,
    pub regs: Regs,
    /// A signal that arrived while stopping; delivered again on resume.
    pending_signal: i32,
    /// Registers changed by us (restart fix-up) that must be written back.
    regs_changed: bool,
}

/// Every thread of one process, stopped under ptrace. Dropping it resumes them
/// all, so no error path can leave a process frozen.
pub struct StoppedProcess {
    pub pid: i32,
    pub threads: Vec<StoppedThread>,
    first_stop: Instant,
    resumed: bool,
}

/// What a failed `PTRACE_SEIZE` means for the user.
pub(crate) fn attach_error(pid: i32, tid: i32, err: std::io::Error) -> EngineError {
    match err.raw_os_error() {
        Some(libc::EPERM) => match procfs::tracer_of(pid) {
            Some(tracer) if tracer != 0 => EngineError::Traced { pid, tracer },
            _ => EngineError::PermissionDenied { pid, detail: format!("ptrace attach to thread {tid}: {err}") },
        },
        Some(libc::ESRCH) => EngineError::ProcessExited(pid),
        _ => EngineError::Ptrace { tid, op: "seize", source: err },
    }
}

impl StoppedProcess {
    /// Seizes and interrupts every thread, listing the threads again until no
    /// new one appears (a thread may be created while we attach).
    pub fn stop(pid: i32) -> Result<StoppedProcess, EngineError> {
        let mut stopped = StoppedProcess { pid, threads: Vec::new(), first_stop: Instant::now(), resumed: false };
        let mut known: BTreeSet<i32> = BTreeSet::new();
        let mut first = true;
        loop {
            let tids = procfs::tasks(pid).map_err(|_| EngineError::ProcessExited(pid))?;
            let new: Vec<i32> = tids.into_iter().filter(|t| !known.contains(t)).collect();
            if new.is_empty() {
                break;
            }
            // Seize all before interrupting any: seizing does not stop a thread,
            // so the pause starts only at the first interrupt.
            let mut seized = Vec::with_capacity(new.len());
            for &tid in &new {
                known.insert(tid);
                match ptrace::seize(tid) {
                    Ok(()) => seized.push(tid),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {} // exited meanwhile
                    Err(e) => return Err(attach_error(pid, tid, e)),
                }
            }
            if first {
                stopped.first_stop = Instant::now();
                first = false;
            }
            for &tid in &seized {
                if let Err(e) = ptrace::interrupt(tid)
                    && e.raw_os_error() != Some(libc::ESRCH)
                {
                    return Err(EngineError::Ptrace { tid, op: "interrupt", source: e });
                }
            }
            for tid in seized {
                let pending_signal =
                    match ptrace::wait(tid).map_err(|e| EngineError::Ptrace { tid, op: "wait", source: e })? {
                        Stop::Exited => continue,
                        Stop::Signal(sig) => sig,
                        Stop::Interrupted | Stop::Trap => 0,
                    };
                let regs = match ptrace::get_regs(tid) {
                    Ok(r) => r,
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                    Err(e) => return Err(EngineError::Ptrace { tid, op: "getregs", source: e }),
                };
                let mut thread = StoppedThread { tid, regs, pending_signal, regs_changed: false };
                thread.regs_changed = ptrace::restart_interrupted_syscall(&mut thread.regs);
                stopped.threads.push(thread);
            }
        }
        if stopped.threads.is_empty() {
            stopped.resumed = true;
            return Err(EngineError::ProcessExited(pid));
        }
        Ok(stopped)
    }

    /// Lets every thread go; returns the pause (first stop to last resume).
    pub fn resume(mut self) -> Duration {
        self.resume_all();
        self.first_stop.elapsed()
    }

    fn resume_all(&mut self) {
        if self.resumed {
            return;
        }
        self.resumed = true;
        for t in &self.threads {
            if t.regs_changed
                && let Err(e) = ptrace::set_regs(t.tid, &t.regs)
            {
                tracing::warn!(tid = t.tid, error = %e, "could not restore syscall restart state");
            }
            if let Err(e) = ptrace::detach(t.tid, t.pending_signal)
                && e.raw_os_error() != Some(libc::ESRCH)
            {
                tracing::warn!(tid = t.tid, error = %e, "detach failed");
            }
        }
    }
}

impl Drop for StoppedProcess {
    fn drop(&mut self) {
        self.resume_all();
    }
}

/// The floor of any pause: stop and resume every thread doing nothing else.
/// Benchmarks compare the real transition against this.
pub fn stop_resume_floor(pid: i32) -> Result<(Duration, usize), EngineError> {
    let stopped = StoppedProcess::stop(pid)?;
    let n = stopped.threads.len();
    Ok((stopped.resume(), n))
}
