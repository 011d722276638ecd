//! Thin, checked wrappers over the ptrace calls the engine uses. Every call
//! names the thread, so errors can say which one misbehaved.

use std::io;

pub type Regs = libc::user_regs_struct;

/// Kernel-internal "restart this syscall unless a handler runs" code; see
/// [`restart_interrupted_syscall`].
const ERESTARTNOHAND: u64 = (-514i64) as u64;
const EINTR_RET: u64 = (-(libc::EINTR as i64)) as u64;

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Attach without stopping the thread; `PTRACE_O_EXITKILL` is not set, so a
/// crash of this tool leaves the target running.
pub fn seize(tid: i32) -> io::Result<()> {
    // SAFETY: plain syscall; no memory is passed.
    check(unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, 0usize) })
}

/// Like [`seize`], and syscall stops are reported as [`Stop::Syscall`]
/// (`PTRACE_O_TRACESYSGOOD`): should this tool die at one, the kernel's
/// leftover stop code is then not a signal it would deliver to the thread.
pub fn seize_for_syscalls(tid: i32) -> io::Result<()> {
    let options = libc::PTRACE_O_TRACESYSGOOD as usize;
    // SAFETY: plain syscall; the data argument is an option mask.
    check(unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, options) })
}

/// Sets `PTRACE_O_TRACESYSGOOD` on a thread seized with [`seize`] (see
/// [`seize_for_syscalls`]).
pub fn trace_syscalls(tid: i32) -> io::Result<()> {
    let options = libc::PTRACE_O_TRACESYSGOOD as usize;
    // SAFETY: plain syscall; the data argument is an option mask.
    check(unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, tid, 0usize, options) })
}

/// Resumes the thread until its next syscall entry or exit.
pub fn resume_to_syscall(tid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall; the data argument is a signal number.
    check(unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0usize, signal as usize) })
}

pub fn interrupt(tid: i32) -> io::Result<()> {
    // SAFETY: plain syscall; no memory is passed.
    check(unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) })
}

/// Detach and let the thread run, delivering `signal` if it was held back.
pub fn detach(tid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall; the data argument is a signal number.
    check(unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, signal as usize) })
}

pub fn get_regs(tid: i32) -> io::Result<Regs> {
    // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes exactly one user_regs_struct into `regs`.
    check(unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0usize, &mut regs as *mut Regs) })?;
    Ok(regs)
}

pub fn set_regs(tid: i32, regs: &Regs) -> io::Result<()> {
    // SAFETY: the kernel reads exactly one user_regs_struct from `regs`.
    check(unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, 0usize, regs as *const Regs) })
}

/// How a waited-for thread stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stopped by `PTRACE_INTERRUPT` (or a group stop): nothing to deliver.
    Interrupted,
    /// A breakpoint trap (or a plain `SIGTRAP`).
    Trap,
    /// A syscall entry or exit stop of a thread seized with [`seize_for_syscalls`].
    Syscall,
    /// A signal arrived first; it must be delivered when the thread is let go.
    Signal(i32),
    /// The thread is gone.
    Exited,
}

pub fn wait(tid: i32) -> io::Result<Stop> {
    wait_with(tid, 0).map(|stop| stop.unwrap_or(Stop::Exited))
}

/// Like [`wait`], without blocking: `None` while the thread has nothing to report.
pub fn wait_nohang(tid: i32) -> io::Result<Option<Stop>> {
    wait_with(tid, libc::WNOHANG)
}

fn wait_with(tid: i32, flags: i32) -> io::Result<Option<Stop>> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one int into `status`.
        let ret = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | flags) };
        if ret == 0 {
            return Ok(None);
        }
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if err.raw_os_error() == Some(libc::ECHILD) {
                return Ok(Some(Stop::Exited));
            }
            return Err(err);
        }
        break;
    }
    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        return Ok(Some(Stop::Exited));
    }
    if !libc::WIFSTOPPED(status) {
        return Ok(Some(Stop::Exited));
    }
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xff;
    Ok(Some(if event == libc::PTRACE_EVENT_STOP {
        Stop::Interrupted
    } else if sig == libc::SIGTRAP | 0x80 {
        Stop::Syscall
    } else if sig == libc::SIGTRAP {
        Stop::Trap
    } else {
        Stop::Signal(sig)
    }))
}

const ERESTART_RESTARTBLOCK: u64 = (-516i64) as u64;
const ERESTARTNOINTR: u64 = (-513i64) as u64;

/// For a thread we borrow to run syscalls in: a sleep interrupted with
/// `ERESTART_RESTARTBLOCK` resumes through the thread's restart block; rather
/// than rely on it surviving the borrowed syscalls, asking
/// the kernel to re-issue the original call instead is always safe: its
/// arguments are still in the registers, and a relative sleep at worst sleeps
/// its full time again.
pub fn restart_without_restart_block(regs: &mut Regs) {
    if (regs.orig_rax as i64) >= 0 && regs.rax == ERESTART_RESTARTBLOCK {
        regs.rax = ERESTARTNOINTR;
    }
}

/// A thread stopped inside a blocking syscall that the kernel would not restart
/// by itself (`epoll_wait` and a few others answer `EINTR` to any interruption,
/// ptrace's included). Turning the result into `ERESTARTNOHAND` makes the
/// kernel re-issue the call on resume when no signal handler is due, and still
/// report `EINTR` when a real signal with a handler is what woke it. Returns
/// whether the registers were changed.
pub fn restart_interrupted_syscall(regs: &mut Regs) -> bool {
    if (regs.orig_rax as i64) >= 0 && regs.rax == EINTR_RET {
        regs.rax = ERESTARTNOHAND;
        return true;
    }
    false
}

const ERESTARTSYS: u64 = (-512i64) as u64;

/// The registers a thread resumes with when the kernel restarts the syscall
/// it was interrupted in (no handler due): the call re-issued (`rip` back
/// over the 2-byte `syscall`, its number in `rax`), and no syscall in
/// progress, so that no later resume applies the restart a second time.
/// Registers outside a syscall come back unchanged.
pub fn with_restart_applied(regs: &Regs) -> Regs {
    let mut r = *regs;
    if (r.orig_rax as i64) >= 0 && matches!(r.rax, ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND) {
        r.rax = r.orig_rax;
        r.rip = r.rip.wrapping_sub(2);
    }
    r.orig_rax = u64::MAX;
    r
}
