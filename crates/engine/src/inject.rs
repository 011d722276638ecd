//! Running a few system calls inside the target process (memfd_create, mmap,
//! mprotect, munmap, close) by borrowing one of its threads for a moment.
//!
//! The borrowed thread's registers are saved and restored exactly, and a
//! syscall it was blocked in is restarted as if nothing happened; the other
//! threads keep running throughout. The thread runs each call from the
//! [`stub`](crate::stub), its stack pointer at a restore frame: should this
//! tool be killed at any step, the thread finishes that one call and returns
//! by itself to where it was interrupted (see `stub` for why).

use crate::error::EngineError;
use crate::procfs::{Mapping, ProcessMemory};
use crate::ptrace::{self, Regs, Stop};
use crate::stub;

/// Room below the stack pointer left untouched: the x86-64 red zone and then some.
const SCRATCH_GAP: u64 = 512;
/// Syscall stops (entries and exits) a called function may make before we give up.
const MAX_CALL_SYSCALLS: usize = 256;

pub struct Injector<'m> {
    pid: i32,
    tid: i32,
    /// As stopped (restart codes normalised); what the kernel restarts from.
    saved: Regs,
    /// With the restart applied: what the restore frame holds.
    resume: Regs,
    stub: u64,
    /// The restore frame, below the thread's red zone.
    frame_at: u64,
    mem: &'m ProcessMemory,
    /// Bytes of the thread's stack we overwrote (frame, scratch), to put back.
    overwritten: Vec<(u64, Vec<u8>)>,
    scratch: Option<(u64, Vec<u8>)>,
    pending_signals: Vec<i32>,
    done: bool,
}

/// Where an injected syscall is left by [`Injector::abandon_during`]: the
/// steps at which a killed tracer can leave the borrowed thread.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    RegistersSet,
    AtEntry,
    AtExit,
}

/// Seizes one thread of `pid` (the main thread if it still runs) and waits
/// for it to stop. Returns the thread, its registers and signals that
/// arrived first (held back until it is let go).
fn borrow_thread(pid: i32) -> Result<(i32, Regs, Vec<i32>), EngineError> {
    let mut tids = crate::procfs::tasks(pid).map_err(|e| EngineError::proc_access(pid, "list threads", e))?;
    // pthread_exit from main leaves a zombie still listed: any other will do.
    tids.sort_by_key(|&t| t != pid);
    let mut borrowed = None;
    for tid in tids {
        match ptrace::seize_for_syscalls(tid) {
            Ok(()) => {
                borrowed = Some(tid);
                break;
            }
            Err(e) => {
                if let Some(err) = crate::threads::attach_error(pid, tid, e) {
                    return Err(err);
                }
            }
        }
    }
    let tid = borrowed.ok_or(EngineError::ProcessExited(pid))?;
    let stopped = wait_first_stop(pid, tid);
    if stopped.is_err() {
        // Interrupt refused or the process ended: nothing was changed; let go.
        crate::threads::let_go(pid, tid, 0);
    }
    let (regs, signals) = stopped?;
    Ok((tid, regs, signals))
}

fn wait_first_stop(pid: i32, tid: i32) -> Result<(Regs, Vec<i32>), EngineError> {
    ptrace::interrupt(tid).map_err(|e| EngineError::Ptrace { tid, op: "interrupt", source: e })?;
    let mut signals = Vec::new();
    match ptrace::wait(tid).map_err(|e| EngineError::Ptrace { tid, op: "wait", source: e })? {
        Stop::Exited => return Err(EngineError::ProcessExited(pid)),
        Stop::Signal(sig) => signals.push(sig),
        Stop::Interrupted | Stop::Trap | Stop::Syscall => {}
    }
    let mut regs = ptrace::get_regs(tid).map_err(|e| EngineError::Ptrace { tid, op: "getregs", source: e })?;
    ptrace::restart_interrupted_syscall(&mut regs);
    ptrace::restart_without_restart_block(&mut regs);
    Ok((regs, signals))
}

impl<'m> Injector<'m> {
    pub fn attach(pid: i32, maps: &[Mapping], mem: &'m ProcessMemory) -> Result<Injector<'m>, EngineError> {
        let stub = stub::plant(pid, maps, mem)?;
        let (tid, saved, pending_signals) = borrow_thread(pid)?;
        let resume = ptrace::with_restart_applied(&saved);
        let Some(below) = saved.rsp.checked_sub(SCRATCH_GAP + stub::FRAME_LEN as u64) else {
            crate::threads::let_go(pid, tid, pending_signals.first().copied().unwrap_or(0));
            return Err(EngineError::Inject {
                pid,
                call: "setup",
                detail: format!("thread {tid} has no stack to borrow (sp 0x{:x})", saved.rsp),
            });
        };
        let frame_at = below & !15;
        let mut inj = Injector {
            pid,
            tid,
            saved,
            resume,
            stub,
            frame_at,
            mem,
            overwritten: Vec::new(),
            scratch: None,
            pending_signals,
            done: false,
        };
        inj.overwrite(frame_at, &stub::frame(&resume), "write restore frame")?;
        Ok(inj)
    }

    /// Writes `bytes` at `addr` on the borrowed thread's stack, keeping what was there.
    fn overwrite(&mut self, addr: u64, bytes: &[u8], what: &'static str) -> Result<(), EngineError> {
        let old = self.mem.read_vec(addr, bytes.len()).map_err(|e| EngineError::io("read target stack", e))?;
        self.mem.write(addr, bytes).map_err(|e| EngineError::io(what, e))?;
        self.overwritten.push((addr, old));
        Ok(())
    }

    /// Runs one syscall in the borrowed thread and returns its raw result
    /// (negative errno on failure).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, EngineError> {
        tracing::debug!(pid = self.pid, tid = self.tid, nr, "injecting a syscall");
        self.load(nr, args)?;
        self.next_syscall_stop()?;
        self.next_syscall_stop()?;
        let tid = self.tid;
        let now = ptrace::get_regs(tid).map_err(|e| EngineError::Ptrace { tid, op: "getregs", source: e })?;
        if now.rip != self.stub + stub::AFTER_SYSCALL {
            return Err(EngineError::Inject {
                pid: self.pid,
                call: "syscall",
                detail: format!("thread {tid} stopped at 0x{:x} instead of after the syscall", now.rip),
            });
        }
        Ok(now.rax as i64)
    }

    /// Calls `function` (no arguments) in the borrowed thread and returns
    /// what it returns in rax: an IFUNC resolver, run as ld.so would run it.
    /// It returns into the stub's call return, so that, should we be killed
    /// meanwhile, the thread still comes back by itself. A function that
    /// makes more than `MAX_CALL_SYSCALLS` syscalls is given up on.
    pub fn call(&mut self, function: u64) -> Result<u64, EngineError> {
        let ret_slot = self.frame_at - 8;
        let call_return = self.stub + stub::CALL_RETURN_AT;
        self.overwrite(ret_slot, &call_return.to_le_bytes(), "write call return address")?;
        let mut regs = self.resume;
        regs.rip = function;
        // At entry, the stack pointer + 8 is 16-byte aligned, as after a call.
        regs.rsp = ret_slot;
        regs.rax = 0;
        let tid = self.tid;
        ptrace::set_regs(tid, &regs).map_err(|e| EngineError::Ptrace { tid, op: "setregs", source: e })?;
        for _ in 0..MAX_CALL_SYSCALLS {
            self.next_syscall_stop()?;
            let now = ptrace::get_regs(tid).map_err(|e| EngineError::Ptrace { tid, op: "getregs", source: e })?;
            let returned = now.rip == self.stub + stub::AFTER_SYSCALL
                && now.rsp == self.frame_at
                && now.orig_rax == stub::SYS_GETPID;
            // Entry or exit of a syscall the function makes: on to the next stop.
            if returned {
                // Its exit: the thread stands after the stub's syscall, as after any.
                self.next_syscall_stop()?;
                return Ok(now.rdi);
            }
        }
        Err(EngineError::Inject {
            pid: self.pid,
            call: "call",
            detail: format!("the function at 0x{function:x} made more than {MAX_CALL_SYSCALLS} syscalls"),
        })
    }

    /// Prepares a call that the caller supervises itself (a callback, which
    /// may run long, make any syscalls and take signals): its return address
    /// is the stub's call return, as for [`Injector::call`], so that should we
    /// be killed meanwhile the thread still comes back by itself. Returns the
    /// stack pointer the function is entered with.
    pub fn prepare_call(&mut self) -> Result<u64, EngineError> {
        let ret_slot = self.frame_at - 8;
        let call_return = self.stub + stub::CALL_RETURN_AT;
        self.overwrite(ret_slot, &call_return.to_le_bytes(), "write call return address")?;
        Ok(ret_slot)
    }

    /// Whether a syscall stop with `regs` is a prepared call's return (the
    /// stub's own syscall); its result is then in `rdi`.
    pub fn is_call_return(&self, regs: &Regs) -> bool {
        regs.rip == self.stub + stub::AFTER_SYSCALL && regs.rsp == self.frame_at && regs.orig_rax == stub::SYS_GETPID
    }

    /// After [`Injector::is_call_return`]: on to that syscall's exit, where
    /// the thread stands as after any injected syscall.
    pub fn complete_call(&mut self) -> Result<(), EngineError> {
        self.next_syscall_stop()
    }

    /// Points the thread at the stub with the call's number and arguments,
    /// its stack pointer at the restore frame.
    fn load(&mut self, nr: i64, args: [u64; 6]) -> Result<(), EngineError> {
        let mut regs = self.resume;
        regs.rax = nr as u64;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.rip = self.stub;
        regs.rsp = self.frame_at;
        let tid = self.tid;
        ptrace::set_regs(tid, &regs).map_err(|e| EngineError::Ptrace { tid, op: "setregs", source: e })
    }

    /// Lets the thread run to its next syscall entry or exit stop; signals
    /// on the way are held back and delivered when we let go.
    fn next_syscall_stop(&mut self) -> Result<(), EngineError> {
        let tid = self.tid;
        loop {
            ptrace::resume_to_syscall(tid, 0).map_err(|e| EngineError::Ptrace { tid, op: "syscall", source: e })?;
            match ptrace::wait(tid).map_err(|e| EngineError::Ptrace { tid, op: "wait", source: e })? {
                Stop::Exited => {
                    self.done = true;
                    return Err(EngineError::ProcessExited(self.pid));
                }
                Stop::Syscall => return Ok(()),
                Stop::Signal(sig) => self.pending_signals.push(sig),
                Stop::Trap => self.pending_signals.push(libc::SIGTRAP),
                Stop::Interrupted => {}
            }
        }
    }

    /// Test hook: starts one syscall and leaves the thread at `at` without
    /// restoring anything, as a tracer killed there would. The caller then
    /// ends the tracing thread (the kernel detaches its tracees).
    #[doc(hidden)]
    pub fn abandon_during(mut self, nr: i64, args: [u64; 6], at: Abandon) -> Result<(), EngineError> {
        self.load(nr, args)?;
        if at != Abandon::RegistersSet {
            self.next_syscall_stop()?;
        }
        if at == Abandon::AtExit {
            self.next_syscall_stop()?;
        }
        std::mem::forget(self);
        Ok(())
    }

    /// Writes `bytes` below the restore frame (saving what was there) and
    /// returns their address in the target.
    pub fn scratch(&mut self, bytes: &[u8]) -> Result<u64, EngineError> {
        self.restore_scratch()?;
        let addr = (self.frame_at - bytes.len() as u64) & !15;
        let old = self.mem.read_vec(addr, bytes.len()).map_err(|e| EngineError::io("read target stack", e))?;
        self.mem.write(addr, bytes).map_err(|e| EngineError::io("write target stack", e))?;
        self.scratch = Some((addr, old));
        Ok(addr)
    }

    fn restore_scratch(&mut self) -> Result<(), EngineError> {
        if let Some((addr, old)) = self.scratch.take() {
            self.mem.write(addr, &old).map_err(|e| EngineError::io("restore target stack", e))?;
        }
        Ok(())
    }

    /// The borrowed thread (for callers that run more than a syscall in it).
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The borrowed thread's registers as they were, restored by `finish`.
    pub fn saved_regs(&self) -> Regs {
        self.saved
    }

    /// Restores the thread exactly and lets it go.
    pub fn finish(mut self) -> Result<(), EngineError> {
        self.release()
    }

    /// The registers first (the stack bytes below them are dead to the
    /// thread from then on, should we die before putting them back), then
    /// the stack, then let go. A signal held back is queued again first, so
    /// that the kernel, delivering it, decides the interrupted syscall's
    /// restart or `EINTR` from the registers as they were.
    fn release(&mut self) -> Result<(), EngineError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let tid = self.tid;
        for &sig in &self.pending_signals {
            // SAFETY: plain syscall.
            unsafe { libc::syscall(libc::SYS_tgkill, self.pid, tid, sig) };
        }
        let regs = if self.pending_signals.is_empty() { self.resume } else { self.saved };
        let regs = ptrace::set_regs(tid, &regs).map_err(|e| EngineError::Ptrace { tid, op: "setregs", source: e });
        let mut stack = self.restore_scratch();
        for (addr, old) in self.overwritten.drain(..).rev() {
            let put_back = self.mem.write(addr, &old).map_err(|e| EngineError::io("restore target stack", e));
            stack = stack.and(put_back);
        }
        // Detaches, or reaps the thread if the process was killed meanwhile.
        crate::threads::let_go(self.pid, tid, 0);
        regs.and(stack)
    }
}

impl Drop for Injector<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "releasing the borrowed thread failed");
        }
    }
}

/// A syscall result as a Result, naming the call.
pub fn check(pid: i32, call: &'static str, ret: i64) -> Result<u64, EngineError> {
    if (-4095..0).contains(&ret) {
        Err(EngineError::Inject { pid, call, detail: std::io::Error::from_raw_os_error(-ret as i32).to_string() })
    } else {
        Ok(ret as u64)
    }
}
