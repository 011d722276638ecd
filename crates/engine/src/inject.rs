//! Running a few system calls inside the target process (memfd_create, mmap,
//! mprotect, munmap, close) by borrowing one of its threads for a moment.
//!
//! The borrowed thread's registers are saved and restored exactly, and a
//! syscall it was blocked in is restarted as if nothing happened; the other
//! threads keep running throughout.

use crate::error::EngineError;
use crate::procfs::{Mapping, ProcessMemory};
use crate::ptrace::{self, Regs, Stop};

/// Room below the stack pointer left untouched: the x86-64 red zone and then some.
const SCRATCH_GAP: u64 = 512;

pub struct Injector<'m> {
    pid: i32,
    tid: i32,
    saved: Regs,
    syscall_insn: u64,
    mem: &'m ProcessMemory,
    scratch: Option<(u64, Vec<u8>)>,
    pending_signals: Vec<i32>,
    done: bool,
}

/// Finds a `syscall` instruction (0f 05) to point the borrowed thread at: the
/// vDSO has one on every x86-64 kernel; executable file mappings are the fallback.
fn find_syscall_insn(mem: &ProcessMemory, maps: &[Mapping]) -> Option<u64> {
    let candidates = maps
        .iter()
        .filter(|m| m.exec && m.read && m.path == "[vdso]")
        .chain(maps.iter().filter(|m| m.exec && m.read && m.path.starts_with('/')));
    for m in candidates {
        let len = m.len().min(4 << 20) as usize;
        let Ok(bytes) = mem.read_vec(m.start, len) else { continue };
        if let Some(i) = bytes.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Some(m.start + i as u64);
        }
    }
    None
}

impl<'m> Injector<'m> {
    pub fn attach(pid: i32, maps: &[Mapping], mem: &'m ProcessMemory) -> Result<Injector<'m>, EngineError> {
        let syscall_insn = find_syscall_insn(mem, maps).ok_or(EngineError::Inject {
            pid,
            call: "setup",
            detail: "no syscall instruction found in the vDSO or any executable mapping".into(),
        })?;
        // The main thread is the natural choice; if it already exited
        // (pthread_exit from main: a zombie still listed), borrow any other.
        let mut tids = crate::procfs::tasks(pid).map_err(|e| EngineError::proc_access(pid, "list threads", e))?;
        tids.sort_by_key(|&t| t != pid);
        let mut borrowed = None;
        for tid in tids {
            match ptrace::seize(tid) {
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
        let mut inj = Injector {
            pid,
            tid,
            // SAFETY: user_regs_struct is plain old data.
            saved: unsafe { std::mem::zeroed() },
            syscall_insn,
            mem,
            scratch: None,
            pending_signals: Vec::new(),
            done: false,
        };
        if let Err(e) = ptrace::interrupt(tid) {
            // Only a thread that is gone refuses the interrupt of its tracer.
            inj.done = true;
            return Err(EngineError::Ptrace { tid, op: "interrupt", source: e });
        }
        loop {
            match ptrace::wait(tid).map_err(|e| EngineError::Ptrace { tid, op: "wait", source: e })? {
                Stop::Exited => {
                    inj.done = true;
                    return Err(EngineError::ProcessExited(pid));
                }
                Stop::Signal(sig) => inj.pending_signals.push(sig),
                Stop::Interrupted | Stop::Trap => break,
            }
            if !inj.pending_signals.is_empty() {
                break;
            }
        }
        inj.saved = ptrace::get_regs(tid).map_err(|e| EngineError::Ptrace { tid, op: "getregs", source: e })?;
        ptrace::restart_interrupted_syscall(&mut inj.saved);
        ptrace::restart_without_restart_block(&mut inj.saved);
        Ok(inj)
    }

    /// Runs one syscall in the borrowed thread and returns its raw result
    /// (negative errno on failure).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, EngineError> {
        let tid = self.tid;
        let mut regs = self.saved;
        regs.rax = nr as u64;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.rip = self.syscall_insn;
        // Not in a syscall: keeps the kernel's restart logic off our registers.
        regs.orig_rax = u64::MAX;
        ptrace::set_regs(tid, &regs).map_err(|e| EngineError::Ptrace { tid, op: "setregs", source: e })?;
        loop {
            ptrace::single_step(tid, 0).map_err(|e| EngineError::Ptrace { tid, op: "singlestep", source: e })?;
            match ptrace::wait(tid).map_err(|e| EngineError::Ptrace { tid, op: "wait", source: e })? {
                Stop::Exited => {
                    self.done = true;
                    return Err(EngineError::ProcessExited(self.pid));
                }
                Stop::Signal(sig) => {
                    // Hold the signal back and deliver it when we let go.
                    self.pending_signals.push(sig);
                }
                Stop::Trap | Stop::Interrupted => {}
            }
            let now = ptrace::get_regs(tid).map_err(|e| EngineError::Ptrace { tid, op: "getregs", source: e })?;
            if now.rip == self.syscall_insn + 2 {
                return Ok(now.rax as i64);
            }
            if now.rip != self.syscall_insn {
                return Err(EngineError::Inject {
                    pid: self.pid,
                    call: "syscall",
                    detail: format!("thread {tid} ended at 0x{:x} instead of after the syscall", now.rip),
                });
            }
        }
    }

    /// Writes `bytes` below the borrowed thread's stack pointer (saving what was
    /// there) and returns their address in the target.
    pub fn scratch(&mut self, bytes: &[u8]) -> Result<u64, EngineError> {
        self.restore_scratch()?;
        let addr = (self.saved.rsp - SCRATCH_GAP - bytes.len() as u64) & !15;
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

    fn release(&mut self) -> Result<(), EngineError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let scratch = self.restore_scratch();
        let tid = self.tid;
        let regs =
            ptrace::set_regs(tid, &self.saved).map_err(|e| EngineError::Ptrace { tid, op: "setregs", source: e });
        let first = self.pending_signals.first().copied().unwrap_or(0);
        // Detaches, or reaps the thread if the process was killed meanwhile.
        crate::threads::let_go(self.pid, tid, first);
        // More than one held-back signal: queue the rest again.
        for &sig in self.pending_signals.iter().skip(1) {
            // SAFETY: plain syscall.
            unsafe { libc::syscall(libc::SYS_tgkill, self.pid, tid, sig) };
        }
        scratch.and(regs)
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
