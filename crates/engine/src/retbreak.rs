//! Return breakpoints: a thread that is nearly always inside a function
//! being replaced (a loop calling a long-running function) is rarely caught
//! outside it by stopping at random moments. Instead, the return address of
//! its outermost busy frame is redirected to a return trampoline (`stub`),
//! every other thread runs on, and this one is traced from syscall stop to
//! syscall stop until it enters the trampoline's syscall: it has just left
//! the busy code. It is kept stopped there (parked) while the others are
//! stopped and checked, and the switch happens then; if another thread is
//! busy, it is waited for the same way while the parked ones stay parked
//! (else two threads taking turns in the function would never both be out).
//!
//! Why a redirected stack slot and a syscall rather than an `int3` in the
//! caller's code: the slot belongs to that one frame of that one thread, so
//! a recursive call or another thread running the same caller never meets
//! it (no stack pointer test needed); and should this tool be killed
//! meanwhile, the thread goes through the trampoline untraced, makes one
//! harmless syscall and returns where it would have: no trap left planted
//! that would kill the process with `SIGTRAP`.

use crate::error::EngineError;
use crate::procfs::ProcessMemory;
use crate::ptrace::{self, Regs, Stop};
use crate::stack::ReturnPoint;
use crate::stub;
use crate::threads::{StoppedProcess, StoppedThread, let_go, let_go_all};
use std::ops::Range;
use std::time::{Duration, Instant};

/// How often the wait looks at the traced thread.
const POLL: Duration = Duration::from_micros(100);

/// A planted return point and the thread it waits for, stopped and traced
/// whenever this is dropped: dropping puts the slot back (if the frame has
/// not returned) and lets the thread go.
struct Planted<'m> {
    pid: i32,
    tid: i32,
    mem: &'m ProcessMemory,
    point: ReturnPoint,
    trampoline: u64,
    pending_signal: i32,
    armed: bool,
}

impl Drop for Planted<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.mem.read_u64(self.point.slot).ok() == Some(self.trampoline)
            && let Err(e) = self.mem.write(self.point.slot, &self.point.ret.to_le_bytes())
        {
            tracing::warn!(tid = self.tid, error = %e, "could not put a return address back");
        }
        let_go(self.pid, self.tid, self.pending_signal);
    }
}

/// Threads kept stopped while another is waited for; let go if dropped.
struct Parked {
    pid: i32,
    threads: Vec<StoppedThread>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        let_go_all(self.pid, std::mem::take(&mut self.threads));
    }
}

/// Redirects the busy frame of `stopped`'s thread `tid` at `point`, lets
/// every other thread go but those `parked` (caught earlier at their own
/// return: they stay stopped, out of busy code), and waits until `deadline`
/// for `tid` to return into the trampoline. `Ok(Some)`: caught; it and the
/// parked threads are handed back stopped, it with the registers it has once
/// returned (for the stack check). `Ok(None)`: no room for a trampoline, or
/// the deadline passed; the slot is put back and every thread let go.
pub fn wait_for_return(
    stopped: StoppedProcess,
    tid: i32,
    point: ReturnPoint,
    tail: &Range<u64>,
    mem: &ProcessMemory,
    deadline: Instant,
    parked: &[i32],
) -> Result<Option<Vec<StoppedThread>>, EngineError> {
    let Some(trampoline) = stub::trampoline_slot(mem, tail, point.ret) else {
        drop(stopped);
        return Ok(None);
    };
    let code = stub::trampoline(point.ret);
    mem.write(trampoline, &code).map_err(|e| EngineError::io("write return trampoline", e))?;
    let pid = stopped.pid;
    let keep: Vec<i32> = parked.iter().copied().chain([tid]).collect();
    let (busy, others): (Vec<StoppedThread>, Vec<StoppedThread>) =
        stopped.release_all_but(&keep).into_iter().partition(|t| t.tid == tid);
    let mut parked = Parked { pid, threads: others };
    let Some(thread) = busy.into_iter().next() else { return Ok(None) };
    let mut planted = Planted { pid, tid, mem, point, trampoline, pending_signal: thread.pending_signal, armed: true };
    if thread.regs_changed {
        ptrace::set_regs(tid, &thread.regs).map_err(|e| EngineError::Ptrace { tid, op: "setregs", source: e })?;
    }
    ptrace::trace_syscalls(tid).map_err(|e| EngineError::Ptrace { tid, op: "setoptions", source: e })?;
    mem.write(point.slot, &trampoline.to_le_bytes()).map_err(|e| EngineError::io("redirect return address", e))?;
    let Some(regs) = run_until_returned(&mut planted, deadline)? else { return Ok(None) };
    planted.armed = false;
    let returned = Regs { rip: point.ret, rsp: point.cfa, ..regs };
    let mut held = std::mem::take(&mut parked.threads);
    held.push(StoppedThread::held(tid, returned, planted.pending_signal));
    Ok(Some(held))
}

/// Traces the thread from syscall stop to syscall stop until it stops at
/// the trampoline's syscall with the stack pointer of that frame. `None`
/// once `deadline` passes (the thread is stopped again first).
fn run_until_returned(p: &mut Planted<'_>, deadline: Instant) -> Result<Option<Regs>, EngineError> {
    let tid = p.tid;
    let at = p.trampoline + stub::TRAMPOLINE_AFTER_SYSCALL;
    let sp = p.point.cfa - stub::TRAMPOLINE_PUSHED;
    let mut deliver = std::mem::take(&mut p.pending_signal);
    loop {
        ptrace::resume_to_syscall(tid, deliver).map_err(|e| EngineError::Ptrace { tid, op: "syscall", source: e })?;
        deliver = 0;
        let stop = loop {
            match ptrace::wait_nohang(tid).map_err(|e| EngineError::Ptrace { tid, op: "wait", source: e })? {
                Some(stop) => break stop,
                None if Instant::now() >= deadline => return stop_again(p).map(|()| None),
                None => std::thread::sleep(POLL),
            }
        };
        match stop {
            Stop::Exited => {
                p.armed = false;
                // The thread ended (pthread_exit): nothing to wait for; the
                // transition tries again, unless the whole process is gone.
                if crate::procfs::process_ended(p.pid) {
                    return Err(EngineError::ProcessExited(p.pid));
                }
                return Ok(None);
            }
            Stop::Syscall => {
                let regs = ptrace::get_regs(tid).map_err(|e| EngineError::Ptrace { tid, op: "getregs", source: e })?;
                if regs.rip == at && regs.rsp == sp {
                    return Ok(Some(regs));
                }
            }
            Stop::Signal(sig) => deliver = sig,
            Stop::Trap => deliver = libc::SIGTRAP,
            Stop::Interrupted => {}
        }
    }
}

/// Interrupts the running thread and waits for it to stop, keeping a signal
/// that arrives first for when it is let go.
fn stop_again(p: &mut Planted<'_>) -> Result<(), EngineError> {
    let tid = p.tid;
    ptrace::interrupt(tid).map_err(|e| EngineError::Ptrace { tid, op: "interrupt", source: e })?;
    match ptrace::wait(tid).map_err(|e| EngineError::Ptrace { tid, op: "wait", source: e })? {
        Stop::Exited => {
            p.armed = false;
            Err(EngineError::ProcessExited(p.pid))
        }
        Stop::Signal(sig) => {
            p.pending_signal = sig;
            Ok(())
        }
        Stop::Trap => {
            p.pending_signal = libc::SIGTRAP;
            Ok(())
        }
        // A syscall stop reached before the interrupt is a stop too; the
        // interrupt's own is dropped when the thread is let go.
        Stop::Interrupted | Stop::Syscall => Ok(()),
    }
}
