//! Catching a process that has just exec'd before its executable's entry
//! point, and holding it there.
//!
//! Where a new process stands when we get to it (the exec event reaches us
//! while it already runs): at the entry itself (nothing ran: a static
//! executable, or caught at once), inside the dynamic loader's `_dl_start`
//! (mapping and relocating libraries), or inside its `_dl_init` (running
//! their constructors); else its own code runs already. glibc's loader
//! enters both from its `_start`, whose frame sits right below the initial
//! stack pointer, so the return address of whichever of the two runs is in
//! one known slot. That slot is redirected to a return trampoline (`stub`);
//! when the call returns, the thread stops at the trampoline's syscall and
//! the register that carries the entry point on (`rax` after `_dl_start`,
//! `r12` after `_dl_init`) is pointed at a second trampoline, which leads to
//! the entry: the thread stops there with every library mapped and
//! initialised and none of the executable's code run.
//!
//! Kill safety: no `int3` is planted and no single step or debug register is
//! used: a trampoline is a detour that makes one harmless syscall, so a
//! thread whose tracer died goes on through it to where it would have gone.
//! At the entry the thread is not kept traced (the engine's apply attaches
//! by itself): its syscall is turned into a `nanosleep` of [`HOLD`] and it is
//! let go. [`Held::release`] cuts the sleep short once patched; should we die
//! first, the sleep ends by itself and the program starts, unpatched, at
//! most [`HOLD`] late. Registers that matter at the entry (`rdx`, `rsp`) are
//! never changed; `rdi` and `rsi`, which the ABI leaves undefined there,
//! carry the sleep's arguments.

use crate::error::EngineError;
use crate::procfs::{self, ProcessMemory};
use crate::ptrace::{self, Regs, Stop};
use crate::stub;
use serde::Serialize;
use std::ops::Range;
use std::time::{Duration, Instant};

/// How long a held process sleeps at its entry before it goes on by itself.
/// Patching takes milliseconds; this bounds the delay of a program whose
/// patcher died while it was held, and is the time the patcher has to reach it.
pub const HOLD: Duration = Duration::from_secs(2);
const SYS_NANOSLEEP: u64 = 35;
const AT_BASE: u64 = 7;
const AT_ENTRY: u64 = 9;
/// A thread still in the loader's first instructions (its `_dl_start` frame
/// not pushed yet) is let through this many syscall stops to get there.
const MAX_EARLY_STOPS: u32 = 32;
const POLL: Duration = Duration::from_micros(50);
/// Where the sleep's timespec goes, below the stack pointer at the entry:
/// inside the red zone, which nothing of the engine ever writes (its
/// injections keep below it), and dead at an entry point.
const TIMESPEC_BELOW_SP: u64 = 64;

/// Where a caught process was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// At the entry point, nothing of the program run yet.
    Entry,
    /// In the dynamic loader, before its libraries were all mapped.
    Loader,
    /// In the loader running the libraries' constructors.
    Constructors,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Entry => "at its entry point",
            Stage::Loader => "in the dynamic loader",
            Stage::Constructors => "in library constructors",
        })
    }
}

/// The outcome of [`catch`].
#[derive(Debug)]
pub enum Caught {
    /// Held at the entry point: patch it, then [`Held::release`] it.
    Held(Box<Held>),
    /// Its own code runs (or where it stands cannot be told): patch it as any
    /// running process. Says why.
    Running(String),
}

/// A process sleeping at its entry point, not traced. Released on drop.
#[derive(Debug)]
pub struct Held {
    pub pid: i32,
    pub stage: Stage,
    /// When it stopped at the entry.
    pub at: Instant,
    /// Its registers at the entry stop (at the trampoline's syscall).
    regs: Regs,
    /// Its start time: a later process reusing the pid is not ours.
    start: Option<u64>,
    released: bool,
}

/// Seizes process `pid` (just exec'd, one thread) and, if it has not reached
/// its executable's entry point yet, lets it run there and holds it; waits
/// until `deadline` at most (a constructor that blocks), then lets it go.
pub fn catch(pid: i32, deadline: Instant) -> Result<Caught, EngineError> {
    catch_inner(pid, deadline, None)
}

/// Where [`catch_abandoning`] stops tracing without letting go, as a tracer
/// killed there would.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    /// The loader's return redirected, the thread still stopped.
    Planted,
    /// The thread running on its way to the entry.
    Running,
    /// The thread stopped at the entry trampoline's syscall.
    AtEntry,
    /// Its syscall turned into the hold's sleep, not yet let go.
    Holding,
}

/// For kill-safety tests: [`catch`], but the calling thread stops tracing at
/// `at` and returns; when it ends, the kernel detaches the process exactly
/// as when a killed tracer exits.
#[doc(hidden)]
pub fn catch_abandoning(pid: i32, deadline: Instant, at: Abandon) -> Result<Caught, EngineError> {
    catch_inner(pid, deadline, Some(at))
}

fn catch_inner(pid: i32, deadline: Instant, abandon: Option<Abandon>) -> Result<Caught, EngineError> {
    let mem = ProcessMemory::open(pid, true).map_err(|e| EngineError::proc_access(pid, "open memory", e))?;
    let auxv = std::fs::read(format!("{}/auxv", procfs::proc_dir(pid)))
        .map_err(|e| EngineError::proc_access(pid, "read auxv", e))?;
    let (Some(entry), base) = (auxv_value(&auxv, AT_ENTRY), auxv_value(&auxv, AT_BASE).unwrap_or(0)) else {
        return Ok(Caught::Running("its auxv names no entry point".into()));
    };
    let stack = start_stack(pid).ok_or(EngineError::ProcessExited(pid))?;
    let mut t = Traced::seize(pid)?;
    t.abandon = abandon;
    if procfs::tasks(pid).map(|t| t.len()).unwrap_or(0) != 1 {
        return Ok(Caught::Running("it runs several threads already".into()));
    }
    let maps = procfs::maps(pid).map_err(|e| EngineError::proc_access(pid, "read maps", e))?;
    let Some(tail) = stub::tail(pid, &maps, &mem) else {
        return Ok(Caught::Running("no mapped file has room for a return trampoline".into()));
    };
    let way = Way { pid, mem: &mem, tail, entry, stack };
    let (stage, regs) = match way.to_entry(&mut t, base, deadline)? {
        Ok(at) => at,
        Err(why) => return Ok(Caught::Running(why)),
    };
    if t.abandoning(Abandon::AtEntry) {
        return Ok(Caught::Running("abandoned at the entry".into()));
    }
    hold(&mut t, &mem, regs)?;
    let start = procfs_start_time(pid);
    Ok(Caught::Held(Box::new(Held { pid, stage, at: Instant::now(), regs, start, released: false })))
}

/// What a process needs to be led to its entry point.
struct Way<'m> {
    pid: i32,
    mem: &'m ProcessMemory,
    tail: Range<u64>,
    entry: u64,
    /// The initial stack pointer (`argc`'s address).
    stack: u64,
}

impl Way<'_> {
    /// Brings the seized thread to a stop at the entry trampoline's syscall.
    /// `Err(why)`: its own code runs already, or it did not get there in time.
    fn to_entry(
        &self,
        t: &mut Traced,
        base: u64,
        deadline: Instant,
    ) -> Result<Result<(Stage, Regs), String>, EngineError> {
        let late = || "not at its entry point by the deadline".to_string();
        let regs = t.regs()?;
        if regs.rip == self.entry {
            let trampoline = self.trampoline(self.entry)?;
            t.set_regs(&Regs { rip: trampoline, ..regs })?;
            return Ok(self.wait_at(t, trampoline, regs.rsp, deadline)?.map(|r| (Stage::Entry, r)).ok_or_else(late));
        }
        let Some(loader) = (base != 0).then(|| loader_layout(self.mem, base)).flatten() else {
            return Ok(Err("past its entry point (no glibc loader frame)".into()));
        };
        let Some(stage) = self.loader_stage(t, &loader, deadline)? else {
            return Ok(Err(format!("past its entry point (pc 0x{:x})", regs.rip)));
        };
        let ret = if stage == Stage::Loader { loader.after_start } else { loader.after_init };
        let cfa = self.cfa(stage);
        let first = self.trampoline(ret)?;
        self.write(cfa - 8, first, "redirect the loader's return")?;
        if t.abandoning(Abandon::Planted) {
            return Ok(Err("abandoned once planted".into()));
        }
        let Some(regs) = self.wait_at(t, first, cfa, deadline)? else { return Ok(Err(late())) };
        // The loader carries the entry on in rax (after `_dl_start`: saved by
        // the trampoline, on the stack) or r12 (after `_dl_init`).
        let (user_entry, regs) = if stage == Stage::Loader {
            let pushed_rax = regs.rsp + 16;
            let e = self.mem.read_u64(pushed_rax).map_err(|e| EngineError::io("read the loader's result", e))?;
            let to = self.trampoline(e)?;
            self.write(pushed_rax, to, "lead the loader to the entry trampoline")?;
            (to, regs)
        } else {
            let to = self.trampoline(regs.r12)?;
            (to, Regs { r12: to, ..regs })
        };
        t.set_regs(&regs)?;
        Ok(self.wait_at(t, user_entry, self.stack, deadline)?.map(|r| (stage, r)).ok_or_else(late))
    }

    /// Whether the thread is inside `_dl_start` or `_dl_init` (their return
    /// address in the slot below the initial stack). A thread in the
    /// loader's first instructions is let through a few syscall stops first.
    fn loader_stage(&self, t: &mut Traced, l: &Loader, deadline: Instant) -> Result<Option<Stage>, EngineError> {
        // Not yet waiting at anything: a test's abandonment is for later.
        let abandon = t.abandon.take();
        let stage = self.early_stops(t, l, deadline);
        t.abandon = abandon;
        stage
    }

    /// The stack pointer once the loader's call of that stage returns:
    /// `_start` calls `_dl_start` from the initial stack pointer and
    /// `_dl_init` from it aligned to 16 (the same, as the kernel aligns it).
    fn cfa(&self, stage: Stage) -> u64 {
        if stage == Stage::Constructors { self.stack & !15 } else { self.stack }
    }

    fn early_stops(&self, t: &mut Traced, l: &Loader, deadline: Instant) -> Result<Option<Stage>, EngineError> {
        let at = |stage| self.mem.read_u64(self.cfa(stage) - 8).ok();
        for _ in 0..MAX_EARLY_STOPS {
            let regs = t.regs()?;
            match (at(Stage::Loader), at(Stage::Constructors)) {
                (Some(v), _) if v == l.after_start => return Ok(Some(Stage::Loader)),
                (_, Some(v)) if v == l.after_init => return Ok(Some(Stage::Constructors)),
                _ if l.start.contains(&regs.rip) => {
                    if t.run_to_syscall(deadline, |_| true)?.is_none() {
                        return Ok(None);
                    }
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// A return trampoline to `to` in the stub's page tail (never cleared:
    /// a thread whose tracer died may still be on its way through it).
    fn trampoline(&self, to: u64) -> Result<u64, EngineError> {
        let at = stub::trampoline_slot(self.mem, &self.tail, to).ok_or_else(|| EngineError::Inject {
            pid: self.pid,
            call: "trampoline",
            detail: "no room left for a return trampoline".into(),
        })?;
        self.mem.write(at, &stub::trampoline(to)).map_err(|e| EngineError::io("write a return trampoline", e))?;
        Ok(at)
    }

    fn write(&self, at: u64, value: u64, what: &str) -> Result<(), EngineError> {
        self.mem.write(at, &value.to_le_bytes()).map_err(|e| EngineError::io(what, e))
    }

    /// Runs the thread to the syscall of the trampoline at `trampoline`,
    /// entered with stack pointer `sp`.
    fn wait_at(
        &self,
        t: &mut Traced,
        trampoline: u64,
        sp: u64,
        deadline: Instant,
    ) -> Result<Option<Regs>, EngineError> {
        let (rip, rsp) = (trampoline + stub::TRAMPOLINE_AFTER_SYSCALL, sp - stub::TRAMPOLINE_PUSHED);
        t.run_to_syscall(deadline, |r| r.rip == rip && r.rsp == rsp)
    }
}

/// Turns the entry stop's syscall into a sleep of [`HOLD`] and lets the
/// thread go into it.
fn hold(t: &mut Traced, mem: &ProcessMemory, regs: Regs) -> Result<(), EngineError> {
    let timespec = regs.rsp - TIMESPEC_BELOW_SP;
    let mut ts = [0u8; 16];
    ts[..8].copy_from_slice(&HOLD.as_secs().to_le_bytes());
    mem.write(timespec, &ts).map_err(|e| EngineError::io("write the hold's timespec", e))?;
    t.set_regs(&Regs { orig_rax: SYS_NANOSLEEP, rdi: timespec, rsi: 0, ..regs })?;
    if !t.abandoning(Abandon::Holding) {
        t.let_go();
    }
    Ok(())
}

impl Held {
    /// Ends the hold: the thread leaves its sleep for the entry point at
    /// once. `Ok(true)`: it was still held (nothing of its own ran until
    /// now); `Ok(false)`: the sleep had ended and it ran on by itself.
    pub fn release(mut self) -> Result<bool, EngineError> {
        self.end_hold()
    }

    fn end_hold(&mut self) -> Result<bool, EngineError> {
        self.released = true;
        if self.start.is_none() || procfs_start_time(self.pid) != self.start {
            return Ok(false);
        }
        let t = Traced::seize(self.pid)?;
        let now = t.regs()?;
        if now.rip != self.regs.rip || now.rsp != self.regs.rsp {
            return Ok(false);
        }
        // No syscall to restart: the trampoline goes on from its syscall
        // and pops what it saved.
        t.set_regs(&Regs { orig_rax: u64::MAX, rax: 0, ..self.regs })?;
        Ok(true)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.released
            && let Err(e) = self.end_hold()
        {
            tracing::debug!(pid = self.pid, error = %e, "held process not released");
        }
    }
}

/// The thread we trace, let go on drop (stopped first if running).
struct Traced {
    tid: i32,
    signal: i32,
    running: bool,
    attached: bool,
    abandon: Option<Abandon>,
}

impl Traced {
    /// Seizes and stops the (main) thread.
    fn seize(tid: i32) -> Result<Traced, EngineError> {
        let ptrace_err = |op, source| EngineError::Ptrace { tid, op, source };
        ptrace::seize_for_syscalls(tid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => EngineError::ProcessExited(tid),
            Some(libc::EPERM) => EngineError::Traced { pid: tid, tracer: procfs::tracer_of(tid).unwrap_or(-1) },
            _ => ptrace_err("seize", e),
        })?;
        let mut t = Traced { tid, signal: 0, running: true, attached: true, abandon: None };
        ptrace::interrupt(tid).map_err(|e| ptrace_err("interrupt", e))?;
        t.wait()?;
        Ok(t)
    }

    fn wait(&mut self) -> Result<Stop, EngineError> {
        let stop = ptrace::wait(self.tid).map_err(|e| EngineError::Ptrace { tid: self.tid, op: "wait", source: e })?;
        self.stopped(stop)
    }

    /// Records a stop: a signal is kept for when the thread goes on.
    fn stopped(&mut self, stop: Stop) -> Result<Stop, EngineError> {
        self.running = false;
        match stop {
            Stop::Exited => {
                self.attached = false;
                return Err(EngineError::ProcessExited(self.tid));
            }
            Stop::Signal(s) => self.signal = s,
            Stop::Trap => self.signal = libc::SIGTRAP,
            Stop::Interrupted | Stop::Syscall => {}
        }
        Ok(stop)
    }

    fn regs(&self) -> Result<Regs, EngineError> {
        ptrace::get_regs(self.tid).map_err(|e| EngineError::Ptrace { tid: self.tid, op: "getregs", source: e })
    }

    fn set_regs(&self, regs: &Regs) -> Result<(), EngineError> {
        ptrace::set_regs(self.tid, regs).map_err(|e| EngineError::Ptrace { tid: self.tid, op: "setregs", source: e })
    }

    /// Runs from syscall stop to syscall stop (signals delivered) until one
    /// whose registers satisfy `at`. `None` at `deadline` (stopped again).
    fn run_to_syscall(&mut self, deadline: Instant, at: impl Fn(&Regs) -> bool) -> Result<Option<Regs>, EngineError> {
        let tid = self.tid;
        loop {
            let signal = std::mem::take(&mut self.signal);
            ptrace::resume_to_syscall(tid, signal).map_err(|e| EngineError::Ptrace {
                tid,
                op: "syscall",
                source: e,
            })?;
            self.running = true;
            if self.abandoning(Abandon::Running) {
                return Ok(None);
            }
            let stop = loop {
                match ptrace::wait_nohang(tid).map_err(|e| EngineError::Ptrace { tid, op: "wait", source: e })? {
                    Some(stop) => break stop,
                    None if Instant::now() >= deadline => {
                        ptrace::interrupt(tid).map_err(|e| EngineError::Ptrace { tid, op: "interrupt", source: e })?;
                        self.wait()?;
                        return Ok(None);
                    }
                    None => std::thread::sleep(POLL),
                }
            };
            if self.stopped(stop)? == Stop::Syscall {
                let regs = self.regs()?;
                if at(&regs) {
                    return Ok(Some(regs));
                }
            }
        }
    }

    /// Whether to stop tracing here without letting go (tests only).
    fn abandoning(&mut self, at: Abandon) -> bool {
        if self.abandon == Some(at) {
            self.attached = false;
        }
        !self.attached
    }

    /// Detaches. A signal that arrived while we held the thread is queued
    /// again first, so that the kernel delivers it as it would have.
    fn let_go(&mut self) {
        if !self.attached {
            return;
        }
        self.attached = false;
        if self.running {
            // Stopped first: detaching needs a stopped tracee.
            if ptrace::interrupt(self.tid).is_err() || self.wait().is_err() {
                return;
            }
        }
        if self.signal != 0 {
            // SAFETY: plain syscall on our own tracee.
            unsafe { libc::syscall(libc::SYS_tgkill, self.tid, self.tid, self.signal) };
        }
        crate::threads::let_go(self.tid, self.tid, 0);
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// Return addresses in glibc's loader `_start` (x86-64), recognised by its
/// exact instructions; any other loader is not caught (its process is
/// patched as a running one).
struct Loader {
    /// `_start`'s instructions before `_dl_start` is called.
    start: Range<u64>,
    /// After `call _dl_start`: `mov %rax, %r12`.
    after_start: u64,
    /// After `call _dl_init`, which is followed by `jmp *%r12`.
    after_init: u64,
}

fn loader_layout(mem: &ProcessMemory, base: u64) -> Option<Loader> {
    let ehdr = mem.read_vec(base, 64).ok()?;
    if ehdr.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let start = base.checked_add(u64::from_le_bytes(ehdr.get(0x18..0x20)?.try_into().ok()?))?;
    let code = mem.read_vec(start, 96).ok()?;
    // mov %rsp,%rdi; call _dl_start; mov %rax,%r12
    if code.get(..4)? != [0x48, 0x89, 0xe7, 0xe8] || code.get(8..11)? != [0x49, 0x89, 0xc4] {
        return None;
    }
    // xor %ebp,%ebp; call _dl_init; ... jmp *%r12
    let call = (11..code.len() - 7).find(|&i| code[i..i + 3] == [0x31, 0xed, 0xe8])?;
    let after = call + 7;
    code.get(after..after + 24)?.windows(3).position(|w| w == [0x41, 0xff, 0xe4])?;
    Some(Loader { start: start..start + 8, after_start: start + 8, after_init: start + after as u64 })
}

fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    auxv.chunks_exact(16).find_map(|e| {
        let k = u64::from_le_bytes(e[..8].try_into().ok()?);
        (k == key).then(|| u64::from_le_bytes(e[8..].try_into().unwrap_or_default()))
    })
}

/// Field `n` (1-based, as proc(5) numbers them, past the command name) of `/proc/PID/stat`.
fn stat_field(pid: i32, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("{}/stat", procfs::proc_dir(pid))).ok()?;
    // Fields after the command name, which may hold spaces and parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(n.checked_sub(3)?)?.parse().ok()
}

/// The initial stack pointer (`startstack`).
fn start_stack(pid: i32) -> Option<u64> {
    stat_field(pid, 28)
}

/// When the process started (`starttime`, clock ticks after boot).
fn procfs_start_time(pid: i32) -> Option<u64> {
    stat_field(pid, 22)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_stack_is_read_past_a_command_name_with_spaces() {
        let me = std::process::id() as i32;
        let sp = start_stack(me).expect("our own start stack");
        let maps = procfs::maps(me).expect("maps");
        let stack = maps.iter().find(|m| m.path == "[stack]").expect("a stack mapping");
        assert!(stack.contains(sp), "0x{sp:x} not in {stack:?}");
    }

    #[test]
    fn our_own_loader_is_recognised() {
        let me = std::process::id() as i32;
        let auxv = std::fs::read("/proc/self/auxv").expect("auxv");
        let base = auxv_value(&auxv, AT_BASE).expect("a dynamic loader");
        let mem = ProcessMemory::open(me, false).expect("mem");
        let l = loader_layout(&mem, base).expect("glibc's _start");
        assert!(l.after_start < l.after_init && l.after_init - l.after_start < 64);
        // The initial stack pointer points at argc.
        let argc = mem.read_u64(start_stack(me).expect("start stack")).expect("argc");
        let args = std::fs::read("/proc/self/cmdline").expect("cmdline");
        assert_eq!(argc as usize, args.iter().filter(|&&b| b == 0).count());
    }
}
