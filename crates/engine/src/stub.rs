//! The code a borrowed thread runs its injected syscalls from, written so
//! that the thread finds its own way back if the tracer dies.
//!
//! When a tracer dies, the kernel detaches its tracees and lets them run from
//! wherever they stand. A thread pointed at a bare `syscall` instruction with
//! injected registers would run on into whatever follows it and crash. So the
//! thread is pointed at this stub instead, with its stack pointer at a frame
//! holding its own registers (the "restore frame", written below its red
//! zone): whatever step the tracer dies at (registers set, at the syscall's
//! entry stop, at its exit stop), the thread finishes the one injected
//! syscall, pops every register from the frame and `iretq`s to the
//! interrupted instruction with its own stack pointer and flags. A syscall it
//! was blocked in is re-issued (the restart is already applied to the frame).
//!
//! The stub lives in the unused tail of the last page of an executable
//! segment of a mapped file (bytes past the segment's end, which the program
//! never reaches), in the process's private copy of that page. Its bytes are
//! the same for every run and every thread, so it is written again each time
//! and never taken out: a thread of an earlier, killed tracer may still be
//! about to run it.

use crate::error::EngineError;
use crate::modules::LoadedModule;
use crate::procfs::{Mapping, ProcessMemory};
use crate::ptrace::Regs;

/// `syscall`, then pop r15..rax in the frame's order, then `iretq`.
pub const STUB: [u8; 27] = [
    0x0f, 0x05, // syscall
    0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, // pop r15, r14, r13, r12
    0x41, 0x5b, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58, // pop r11, r10, r9, r8
    0x5d, 0x5f, 0x5e, 0x5a, 0x59, 0x5b, 0x58, // pop rbp, rdi, rsi, rdx, rcx, rbx, rax
    0x48, 0xcf, // iretq
];

/// Where the thread stands once the injected syscall has returned.
pub const AFTER_SYSCALL: u64 = 2;

/// Where a function called in the target returns to (`CALL_RETURN` is
/// written there): its result goes to rdi, and the stub's syscall is made a
/// harmless `getpid`, at whose entry the tracer reads rdi; then the stub
/// restores the thread as after any injected syscall.
pub const CALL_RETURN_AT: u64 = 32;
pub const CALL_RETURN: [u8; 10] = [
    0x48, 0x89, 0xc7, // mov %rax, %rdi
    0xb8, 0x27, 0, 0, 0, // mov $39 (getpid), %eax
    0xeb, 0xd6, // jmp -42: the stub's syscall
];
pub const SYS_GETPID: u64 = 39;
/// The stub and its call return, before the first return trampoline.
const STUB_AREA: u64 = 64;
/// A tail is used only with room for a few return trampolines too.
const MIN_TAIL: u64 = STUB_AREA + 4 * TRAMPOLINE_LEN;

/// 15 popped registers, then the `iretq` frame: rip, cs, rflags, rsp, ss.
pub const FRAME_LEN: usize = 20 * 8;

/// The restore frame for `regs`, in the order the stub consumes it.
pub fn frame(regs: &Regs) -> [u8; FRAME_LEN] {
    let words = [
        regs.r15,
        regs.r14,
        regs.r13,
        regs.r12,
        regs.r11,
        regs.r10,
        regs.r9,
        regs.r8,
        regs.rbp,
        regs.rdi,
        regs.rsi,
        regs.rdx,
        regs.rcx,
        regs.rbx,
        regs.rax,
        regs.rip,
        regs.cs,
        regs.eflags,
        regs.rsp,
        regs.ss,
    ];
    let mut out = [0u8; FRAME_LEN];
    for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Where the stub goes in this process: the first mapped file (in address
/// order) with room in the tail of an executable segment's last page.
pub fn place(pid: i32, maps: &[Mapping], mem: &ProcessMemory) -> Option<u64> {
    tail(pid, maps, mem).map(|t| t.start)
}

/// The whole unused tail the stub starts: the stub, then room for return
/// trampolines (`retbreak`) up to the end of the mapping.
pub fn tail(pid: i32, maps: &[Mapping], mem: &ProcessMemory) -> Option<std::ops::Range<u64>> {
    crate::modules::loaded_modules(pid, maps).iter().find_map(|m| unused_tail(mem, m))
}

/// Bytes of one return trampoline slot.
pub const TRAMPOLINE_LEN: u64 = 32;
/// Where a thread stands in its trampoline once its `syscall` has been entered.
pub const TRAMPOLINE_AFTER_SYSCALL: u64 = 11;
/// What the trampoline pushes before its syscall (rax, rcx, r11).
pub const TRAMPOLINE_PUSHED: u64 = 24;

/// A return trampoline: what a function returning into it runs instead of
/// returning to `ret` directly. It keeps the return value and the registers
/// its syscall clobbers, makes one harmless syscall (`getppid`) whose entry a
/// tracer can stop at, and goes on to `ret`. With no tracer, it is a detour
/// of a few instructions: no trap, nothing that could kill the process.
pub fn trampoline(ret: u64) -> [u8; TRAMPOLINE_LEN as usize] {
    let mut code = [0u8; TRAMPOLINE_LEN as usize];
    let head: [u8; 21] = [
        0x50, 0x51, 0x41, 0x53, // push rax, rcx, r11
        0xb8, 0x6e, 0, 0, 0, // mov $110 (getppid), %eax
        0x0f, 0x05, // syscall
        0x41, 0x5b, 0x59, 0x58, // pop r11, rcx, rax
        0xff, 0x25, 0, 0, 0, 0, // jmp *0(%rip): the address that follows
    ];
    code[..21].copy_from_slice(&head);
    code[21..29].copy_from_slice(&ret.to_le_bytes());
    code
}

/// A slot for the trampoline to `ret` in the tail: one already holding it
/// (the same return address: reused), else the first not holding any
/// trampoline. Trampolines are never cleared: a thread of a killed tracer
/// may still return through one. `None`: the tail is full (or too short).
pub fn trampoline_slot(mem: &ProcessMemory, tail: &std::ops::Range<u64>, ret: u64) -> Option<u64> {
    let want = trampoline(ret);
    let first = tail.start.checked_add(STUB_AREA)?;
    let mut free = None;
    let mut at = first;
    while at.checked_add(TRAMPOLINE_LEN)? <= tail.end {
        let bytes = mem.read_vec(at, TRAMPOLINE_LEN as usize).ok()?;
        if bytes == want {
            return Some(at);
        }
        if free.is_none() && bytes[..4] != want[..4] {
            free = Some(at);
        }
        at += TRAMPOLINE_LEN;
    }
    free
}

/// Writes the stub into the process and returns its address.
pub fn plant(pid: i32, maps: &[Mapping], mem: &ProcessMemory) -> Result<u64, EngineError> {
    let at = place(pid, maps, mem).ok_or(EngineError::Inject {
        pid,
        call: "setup",
        detail: "no executable segment of a mapped file has room for the syscall stub".into(),
    })?;
    let mut code = [0u8; (CALL_RETURN_AT as usize) + CALL_RETURN.len()];
    code[..STUB.len()].copy_from_slice(&STUB);
    code[CALL_RETURN_AT as usize..].copy_from_slice(&CALL_RETURN);
    mem.write(at, &code).map_err(|e| EngineError::io(format!("write syscall stub at 0x{at:x}"), e))?;
    Ok(at)
}

/// One `PT_LOAD` program header, as mapped: run-time start and end.
struct Segment {
    start: u64,
    end: u64,
}

/// A 16-byte aligned place in a private executable mapping of `module` past
/// every segment's end, with room for the stub, to the mapping's end.
fn unused_tail(mem: &ProcessMemory, module: &LoadedModule) -> Option<std::ops::Range<u64>> {
    let segments = segments(mem, module)?;
    module.mappings.iter().filter(|m| m.exec && m.private).find_map(|m| {
        let used_end = segments.iter().filter(|s| s.start < m.end && s.end > m.start).map(|s| s.end).max()?;
        let at = used_end.checked_add(15)? & !15;
        // Within the page the segment ends in: later pages of the mapping
        // may lie past the end of the file.
        let end = m.end.min(used_end.checked_add(0xfff)? & !0xfff);
        let fits = at.checked_add(MIN_TAIL)? <= end;
        let free = !segments.iter().any(|s| s.end > at && s.start < m.end);
        (fits && free).then_some(at..end)
    })
}

/// The module's loadable segments at run time, read from its ELF header as
/// the process maps it (the first mapping, file offset 0).
fn segments(mem: &ProcessMemory, module: &LoadedModule) -> Option<Vec<Segment>> {
    let ehdr = mem.read_vec(module.start, 64).ok()?;
    if ehdr.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let phoff = u64::from_le_bytes(ehdr.get(0x20..0x28)?.try_into().ok()?);
    let phentsize = u16::from_le_bytes(ehdr.get(0x36..0x38)?.try_into().ok()?) as usize;
    let phnum = u16::from_le_bytes(ehdr.get(0x38..0x3a)?.try_into().ok()?) as usize;
    if phentsize < 56 || phnum == 0 || phnum > 256 || phoff > 4096 {
        return None;
    }
    let table = mem.read_vec(module.start.checked_add(phoff)?, phentsize * phnum).ok()?;
    let word = |ph: &[u8], at: usize| ph.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let loads: Vec<(u64, u64, u64)> = table
        .chunks_exact(phentsize)
        .filter(|ph| ph.get(..4) == Some(&libc::PT_LOAD.to_le_bytes()[..]))
        .filter_map(|ph| Some((word(ph, 8)?, word(ph, 16)?, word(ph, 40)?)))
        .collect();
    // The first segment maps file offset 0 at the module's lowest address.
    let &(offset, vaddr, _) = loads.first()?;
    if offset != 0 {
        return None;
    }
    let bias = module.start.wrapping_sub(vaddr & !0xfff);
    loads
        .iter()
        .map(|&(_, vaddr, memsz)| {
            let start = bias.wrapping_add(vaddr);
            Some(Segment { start, end: start.checked_add(memsz)? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_read_back_in_pop_order() {
        // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
        let mut regs: Regs = unsafe { std::mem::zeroed() };
        regs.r15 = 1;
        regs.rax = 15;
        regs.rip = 16;
        regs.ss = 20;
        let f = frame(&regs);
        let word = |i: usize| u64::from_le_bytes(f[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!((word(0), word(14), word(15), word(19)), (1, 15, 16, 20));
        // 15 one-register pops: as many as the frame has registers before the iretq frame.
        let pops = STUB[2..STUB.len() - 2].iter().filter(|&&b| b != 0x41).count();
        assert_eq!(pops, 15);
        // The call return's jump lands on the stub's syscall.
        let after_jump = CALL_RETURN_AT as i64 + CALL_RETURN.len() as i64;
        assert_eq!(after_jump + i64::from(CALL_RETURN[9] as i8), 0);
    }
}
