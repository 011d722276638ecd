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
    pub(crate) pending_signal: i32,
    /// Registers changed by us (restart fix-up) that must be written back.
    pub(crate) regs_changed: bool,
}

impl StoppedThread {
    /// A thread stopped by other means than [`StoppedProcess::stop`], whose
    /// registers need not be written back; `regs` are what the stack check sees.
    pub(crate) fn held(tid: i32, regs: Regs, pending_signal: i32) -> StoppedThread {
        StoppedThread { tid, regs, pending_signal, regs_changed: false }
    }
}

/// Every thread of one process, stopped under ptrace. Dropping it resumes them
/// all, so no error path can leave a process frozen.
pub struct StoppedProcess {
    pub pid: i32,
    pub threads: Vec<StoppedThread>,
    first_stop: Instant,
    resumed: bool,
}

/// What a failed `PTRACE_SEIZE` of thread `tid` means for the user. `None`:
/// the thread ended meanwhile (a thread that has exited but is still listed
/// refuses to be attached to with `EPERM`); skip it.
pub(crate) fn attach_error(pid: i32, tid: i32, err: std::io::Error) -> Option<EngineError> {
    match err.raw_os_error() {
        Some(libc::ESRCH) => None,
        Some(libc::EPERM) if procfs::thread_ended(pid, tid) => None,
        Some(libc::EPERM) => match procfs::thread_tracer(pid, tid) {
            Some(tracer) if tracer != 0 && tracer as u32 != std::process::id() => {
                Some(EngineError::Traced { pid, tracer })
            }
            _ => Some(EngineError::denied(pid, format!("ptrace attach to thread {tid}: {err}"))),
        },
        _ => Some(EngineError::Ptrace { tid, op: "seize", source: err }),
    }
}

/// How long to keep waiting for a thread we let go of that died meanwhile.
const REAP_PATIENCE: Duration = Duration::from_secs(2);

/// Lets go of a thread we trace that is in a ptrace stop, delivering `signal`.
/// A thread killed while stopped (the process exited) cannot be detached: it
/// is a zombie only its tracer can reap, and until it is, its process cannot
/// be reaped by its parent. So it is reaped here. The main thread is reaped
/// only when we are not the process's parent (the parent reaps it itself and
/// wants its exit status); callers let go of it after every other thread.
pub(crate) fn let_go(pid: i32, tid: i32, signal: i32) {
    let err = match ptrace::detach(tid, signal) {
        Ok(()) => return,
        Err(e) => e,
    };
    if err.raw_os_error() != Some(libc::ESRCH) {
        tracing::warn!(tid, error = %err, "detach failed");
        return;
    }
    if tid == pid && procfs::parent_of(pid) == Some(std::process::id() as i32) {
        return;
    }
    let end = Instant::now() + REAP_PATIENCE;
    loop {
        match ptrace::wait_nohang(tid) {
            Ok(Some(Stop::Exited)) | Err(_) => return,
            // Still in a stop after all (a detach raced with a signal): try again.
            Ok(Some(_)) => {
                if ptrace::detach(tid, signal).is_ok() {
                    return;
                }
            }
            Ok(None) => {}
        }
        if Instant::now() > end {
            tracing::warn!(tid, "thread neither detached nor reaped");
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Waits for the stop of the process's main thread without blocking forever:
/// if the process exits meanwhile, the main thread's exit is reported only
/// once every other thread is reaped, and threads that we had already stopped
/// are then zombies only we can reap. Those are reaped here (and removed from
/// `stopped`) while waiting.
fn wait_main_thread(pid: i32, stopped: &mut Vec<StoppedThread>) -> Result<Stop, EngineError> {
    let mut spins = 0u32;
    loop {
        match ptrace::wait_nohang(pid) {
            Ok(Some(stop)) => return Ok(stop),
            Ok(None) => {}
            Err(e) => return Err(EngineError::Ptrace { tid: pid, op: "wait", source: e }),
        }
        // A thread already stopped has nothing more to report unless it died.
        stopped.retain(|t| !matches!(ptrace::wait_nohang(t.tid), Ok(Some(Stop::Exited))));
        spins += 1;
        if spins < 64 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

impl StoppedProcess {
    /// Seizes and interrupts every thread, listing the threads again until no
    /// new one appears (a thread may be created while we attach). Threads that
    /// end meanwhile are skipped; if the whole process ends, `ProcessExited`.
    /// On any error every thread seized so far is let go again.
    pub fn stop(pid: i32) -> Result<StoppedProcess, EngineError> {
        StoppedProcess::stop_holding(pid, Vec::new())
    }

    /// Like [`stop`](Self::stop), with `held` threads already stopped under
    /// our ptrace (a thread caught returning from busy code); the pause then
    /// starts now.
    pub fn stop_holding(pid: i32, held: Vec<StoppedThread>) -> Result<StoppedProcess, EngineError> {
        let first = held.is_empty();
        let mut known: BTreeSet<i32> = held.iter().map(|t| t.tid).collect();
        let mut stopped = StoppedProcess { pid, threads: held, first_stop: Instant::now(), resumed: false };
        let mut first = first;
        loop {
            let tids = procfs::tasks(pid).map_err(|_| EngineError::ProcessExited(pid))?;
            let new: Vec<i32> = tids.into_iter().filter(|t| !known.contains(t)).collect();
            if new.is_empty() {
                break;
            }
            // Seize all before interrupting any: seizing does not stop a thread,
            // so the pause starts only at the first interrupt.
            let mut failure = None;
            let mut seized = Vec::with_capacity(new.len());
            for &tid in &new {
                known.insert(tid);
                match ptrace::seize(tid) {
                    Ok(()) => seized.push(tid),
                    Err(e) => {
                        if let Some(err) = attach_error(pid, tid, e) {
                            failure = Some(err);
                            break;
                        }
                    }
                }
            }
            if first {
                stopped.first_stop = Instant::now();
                first = false;
            }
            // Every seized thread is interrupted and waited for, even after a
            // failure: only a stopped thread can be detached.
            seized.retain(|&tid| match ptrace::interrupt(tid) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => false,
                Err(e) => {
                    failure.get_or_insert(EngineError::Ptrace { tid, op: "interrupt", source: e });
                    false
                }
            });
            // The main thread last: its exit is reported only after the others'.
            seized.sort_by_key(|&tid| tid == pid);
            for tid in seized {
                let stop = if tid == pid {
                    wait_main_thread(pid, &mut stopped.threads)
                } else {
                    ptrace::wait(tid).map_err(|e| EngineError::Ptrace { tid, op: "wait", source: e })
                };
                let pending_signal = match stop {
                    Ok(Stop::Exited) => continue,
                    Ok(Stop::Signal(sig)) => sig,
                    Ok(Stop::Interrupted | Stop::Trap | Stop::Syscall) => 0,
                    Err(e) => {
                        failure.get_or_insert(e);
                        continue;
                    }
                };
                let regs = match ptrace::get_regs(tid) {
                    Ok(r) => r,
                    Err(e) => {
                        if e.raw_os_error() != Some(libc::ESRCH) {
                            failure.get_or_insert(EngineError::Ptrace { tid, op: "getregs", source: e });
                        }
                        // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
                        let regs: Regs = unsafe { std::mem::zeroed() };
                        // Kept only to be let go of; never checked (this stop is abandoned).
                        stopped.threads.push(StoppedThread { tid, regs, pending_signal, regs_changed: false });
                        failure.get_or_insert(EngineError::ProcessExited(pid));
                        continue;
                    }
                };
                let mut thread = StoppedThread { tid, regs, pending_signal, regs_changed: false };
                thread.regs_changed = ptrace::restart_interrupted_syscall(&mut thread.regs);
                stopped.threads.push(thread);
            }
            if let Some(err) = failure {
                return Err(stopped.abandon(err));
            }
        }
        if stopped.threads.is_empty() {
            stopped.resumed = true;
            return Err(EngineError::ProcessExited(pid));
        }
        Ok(stopped)
    }

    /// Lets every thread go after a failure; a failure caused by the process
    /// ending is reported as such.
    fn abandon(mut self, err: EngineError) -> EngineError {
        self.resume_all();
        if procfs::process_ended(self.pid) { EngineError::ProcessExited(self.pid) } else { err }
    }

    /// Lets every thread go except those in `keep`, which stay stopped and
    /// traced and are handed back (with the signal and restart state they
    /// were stopped with). The caller lets them go ([`let_go_all`]).
    pub fn release_all_but(mut self, keep: &[i32]) -> Vec<StoppedThread> {
        let (kept, others) = std::mem::take(&mut self.threads).into_iter().partition(|t| keep.contains(&t.tid));
        self.threads = others;
        self.resume_all();
        kept
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
                && e.raw_os_error() != Some(libc::ESRCH)
            {
                tracing::warn!(tid = t.tid, error = %e, "could not restore syscall restart state");
            }
        }
        // The main thread last: should the process have died meanwhile, it can
        // be reaped only after the others.
        for t in self.threads.iter().filter(|t| t.tid != self.pid) {
            let_go(self.pid, t.tid, t.pending_signal);
        }
        for t in self.threads.iter().filter(|t| t.tid == self.pid) {
            let_go(self.pid, t.tid, t.pending_signal);
        }
    }
}

impl Drop for StoppedProcess {
    fn drop(&mut self) {
        self.resume_all();
    }
}

/// Lets go of threads handed out by [`StoppedProcess::release_all_but`].
pub(crate) fn let_go_all(pid: i32, threads: Vec<StoppedThread>) {
    let mut held = StoppedProcess { pid, threads, first_stop: Instant::now(), resumed: false };
    held.resume_all();
}

/// The floor of any pause: stop and resume every thread doing nothing else.
/// Benchmarks compare the real transition against this.
pub fn stop_resume_floor(pid: i32) -> Result<(Duration, usize), EngineError> {
    let stopped = StoppedProcess::stop(pid)?;
    let n = stopped.threads.len();
    Ok((stopped.resume(), n))
}
