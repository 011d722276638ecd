//! The stack check: is any thread executing, or about to return into, code
//! that a transition would replace or unmap?
//!
//! Each thread's stack is unwound with the `.eh_frame` unwind tables of every
//! object the process maps (framehop), patch regions included (their linked
//! `.eh_frame`, read from the region itself where its header says). A signal frame is stepped through here,
//! not by framehop: a return address into a sigreturn trampoline
//! (`__restore_rt`) means the kernel's `ucontext` lies just above it, holding
//! the interrupted instruction and stack, which may be another stack (a
//! handler on `sigaltstack`). Where the unwind cannot finish cleanly (code
//! without unwind info, a corrupt frame), every word of the thread's stack
//! that points into a checked range counts as a frame, and signal frames
//! found among those words lead the scan on to the interrupted stack: a false
//! alarm costs a retry, a miss would corrupt the process.

use crate::modules::LoadedModule;
use crate::procfs::{Mapping, ProcessMemory};
use crate::ptrace::Regs;
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use object::{Object, ObjectSection, ObjectSegment};
use std::collections::BTreeSet;
use std::ops::Range;

/// Bytes of stack read in one go per thread; deeper frames are read word by word.
const STACK_WINDOW: u64 = 32 * 1024;
/// The conservative scan reads at most this much of a thread's stack.
const SCAN_LIMIT: u64 = 8 << 20;
const MAX_FRAMES: usize = 4096;
/// Signal frames followed from one thread's stack (nested handlers).
const MAX_SIGNAL_FRAMES: usize = 16;

/// x86-64 sigreturn trampolines: `mov $15, %rax; syscall` (glibc, musl) and
/// `mov $15, %eax; syscall`. The kernel makes a handler return into one.
const SIGRETURN_CODE: [&[u8]; 2] = [&[0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05], &[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05]];

/// Where the interrupted registers are, from the start of the `ucontext` the
/// kernel pushes for a handler: uc_flags, uc_link, uc_stack (8 + 8 + 24
/// bytes), then `mcontext.gregs` in the order r8..r15, rdi, rsi, rbp, rbx,
/// rdx, rax, rcx, rsp, rip.
const UC_GREGS: u64 = 40;
const GREG_RBP: u64 = 10;
const GREG_RSP: u64 = 15;
const GREG_RIP: u64 = 16;

/// A code range a transition must not find any thread in, and its name.
#[derive(Debug, Clone)]
pub struct BusyRange {
    pub range: Range<u64>,
    pub name: String,
}

/// Where a busy frame returns to (see [`StackChecker::return_point`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnPoint {
    /// The stack slot holding the return address.
    pub slot: u64,
    pub ret: u64,
    /// The stack pointer once returned.
    pub cfa: u64,
}

pub struct StackChecker {
    unwinder: UnwinderX86_64<Vec<u8>>,
    cache: CacheX86_64,
    maps: Vec<Mapping>,
    /// Code with unwind tables, at run-time addresses: an unwind may end only there.
    code: Vec<Range<u64>>,
    /// Run-time addresses of every sigreturn trampoline in that code.
    trampolines: BTreeSet<u64>,
    /// Whether the last check had to fall back to the raw stack scan.
    pub fallback_scans: u32,
    /// The opt-in scan of writable memory for user-level stacks.
    pub memory: Option<crate::memscan::MemoryScanner>,
}

/// The registers a signal interrupted, read from the `ucontext` at `uc`.
struct Interrupted {
    rip: u64,
    rsp: u64,
    rbp: u64,
}

fn interrupted_at(uc: u64, read: &mut impl FnMut(u64) -> Result<u64, ()>) -> Option<Interrupted> {
    let greg = |i: u64| uc.checked_add(UC_GREGS + i * 8);
    Some(Interrupted {
        rip: read(greg(GREG_RIP)?).ok()?,
        rsp: read(greg(GREG_RSP)?).ok()?,
        rbp: read(greg(GREG_RBP)?).ok()?,
    })
}

/// Offsets (from the start of `code`) of every sigreturn trampoline in it.
fn find_trampolines(code: &[u8]) -> Vec<u64> {
    let mut found = Vec::new();
    for pattern in SIGRETURN_CODE {
        found.extend(memchr::memmem::find_iter(code, pattern).map(|i| i as u64));
    }
    found
}

/// What one module gives the checker: framehop's view, its code's link-time
/// range, and the link-time addresses of its sigreturn trampolines.
type ModuleInfo = (ExplicitModuleSectionInfo<Vec<u8>>, Range<u64>, Vec<u64>);

fn module_info(data: Vec<u8>) -> Option<ModuleInfo> {
    let file = object::File::parse(data.as_slice()).ok()?;
    let section = |name: &str| {
        let s = file.section_by_name(name)?;
        let bytes = s.data().ok()?.to_vec();
        Some((s.address()..s.address() + s.size(), bytes))
    };
    let text = section(".text");
    let eh_frame = section(".eh_frame");
    let eh_frame_hdr = section(".eh_frame_hdr");
    let text_segment = file
        .segments()
        .find(|seg| matches!(seg.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0))
        .and_then(|seg| {
            let bytes = seg.data().ok()?.to_vec();
            Some((seg.address()..seg.address() + seg.size(), bytes))
        });
    let exec_range = text_segment.as_ref().map(|(r, _)| r.clone()).or_else(|| text.as_ref().map(|(r, _)| r.clone()))?;
    let trampolines = match (&text_segment, &text) {
        (Some((range, bytes)), _) | (None, Some((range, bytes))) => {
            find_trampolines(bytes).into_iter().map(|off| range.start + off).collect()
        }
        (None, None) => Vec::new(),
    };
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: text.as_ref().map(|(r, _)| r.clone()),
        text: text.map(|(_, d)| d),
        eh_frame_svma: eh_frame.as_ref().map(|(r, _)| r.clone()),
        eh_frame: eh_frame.map(|(_, d)| d),
        eh_frame_hdr_svma: eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
        eh_frame_hdr: eh_frame_hdr.map(|(_, d)| d),
        text_segment_svma: text_segment.as_ref().map(|(r, _)| r.clone()),
        text_segment: text_segment.map(|(_, d)| d),
        ..Default::default()
    };
    Some((info, exec_range, trampolines))
}

/// Patch regions' own unwind tables: each region's header says where its
/// linked `.eh_frame` is (absolute addresses, read from the region itself),
/// so that a thread inside replacement code (rollback, a level upgrade) is
/// unwound exactly, like one in any mapped object. A region without one (an
/// older header, a payload built without unwind tables) is left out: a stack
/// inside it falls back to the conservative scan.
fn regions_unwind_info(
    maps: &[Mapping],
    mem: &ProcessMemory,
) -> Vec<(String, Range<u64>, ExplicitModuleSectionInfo<Vec<u8>>)> {
    let mut out = Vec::new();
    for m in maps.iter().filter(|m| crate::region::is_region_mapping(m)) {
        let Some(header) = read_region_header(mem, m.start) else { continue };
        let region = header.range();
        let Some((start, end)) = header.eh_frame.filter(|&(s, e)| s < e && region.start <= s && e <= region.end) else {
            continue;
        };
        let Ok(eh_frame) = mem.read_vec(start, (end - start) as usize) else { continue };
        // Addresses are absolute (svma = avma); framehop indexes code
        // relative to the base, in 32 bits: the base is the region's start.
        let info = ExplicitModuleSectionInfo {
            base_svma: region.start,
            eh_frame_svma: Some(start..end),
            eh_frame: Some(eh_frame),
            ..Default::default()
        };
        out.push((format!("hotpatch region {}", header.record.patch_id), region, info));
    }
    out
}

fn read_region_header(mem: &ProcessMemory, at: u64) -> Option<crate::region::RegionHeader> {
    use crate::region::RegionHeader;
    let len = RegionHeader::encoded_len(&mem.read_vec(at, 12).ok()?).ok()?;
    let header = RegionHeader::decode(&mem.read_vec(at, len).ok()?).ok()?;
    (header.record.region_start == at).then_some(header)
}

impl StackChecker {
    /// Loads the unwind tables of every mapped object and the vDSO. Done
    /// before any thread is stopped, so the pause pays none of it.
    pub fn new(maps: &[Mapping], modules: &[LoadedModule], mem: &ProcessMemory) -> StackChecker {
        let mut unwinder = UnwinderX86_64::new();
        let mut code = Vec::new();
        let mut trampolines = BTreeSet::new();
        for (name, range, info) in regions_unwind_info(maps, mem) {
            code.push(range.clone());
            let base = range.start;
            unwinder.add_module(Module::new(name, range, base, info));
        }
        let mut add = |name: String, avma: Range<u64>, bias: u64, data: Vec<u8>| {
            let Some((info, exec, found)) = module_info(data) else { return };
            code.push(exec.start.wrapping_add(bias)..exec.end.wrapping_add(bias));
            trampolines.extend(found.into_iter().map(|t| t.wrapping_add(bias)));
            unwinder.add_module(Module::new(name, avma, bias, info));
        };
        for module in modules {
            let Ok(data) = std::fs::read(&module.file) else { continue };
            let Ok(elf) = hotpatch_elf::TargetElf::parse(&data) else { continue };
            let Some(bias) = module.bias(&elf) else { continue };
            add(module.path.clone(), module.start..module.end, bias, data);
        }
        if let Some(vdso) = maps.iter().find(|m| m.path == "[vdso]")
            && let Ok(data) = mem.read_vec(vdso.start, vdso.len() as usize)
        {
            // The vDSO is linked at 0 and mapped whole: its bias is where it is mapped.
            add("[vdso]".into(), vdso.start..vdso.end, vdso.start, data);
        }
        StackChecker {
            unwinder,
            cache: CacheX86_64::new(),
            maps: maps.to_vec(),
            code,
            trampolines,
            fallback_scans: 0,
            memory: None,
        }
    }

    /// The sigreturn trampoline `rip` is in, if any (a thread stopped on its way back from a handler).
    fn in_trampoline(&self, rip: u64) -> bool {
        self.trampolines.range(..=rip).next_back().is_some_and(|&t| rip - t < SIGRETURN_CODE[0].len() as u64)
    }

    /// The name of a busy range some frame of this thread is in, if any.
    pub fn busy_in(&mut self, mem: &ProcessMemory, regs: &Regs, ranges: &[BusyRange]) -> Option<String> {
        let hit = |addr: u64| ranges.iter().find(|r| r.range.contains(&addr)).map(|r| r.name.clone());
        if let Some(name) = hit(regs.rip) {
            return Some(name);
        }
        let sp = regs.rsp;
        let stack_end = self.maps.iter().find(|m| m.contains(sp)).map(|m| m.end).unwrap_or(sp);
        let window_len = stack_end.saturating_sub(sp).min(STACK_WINDOW);
        let window = mem.read_vec(sp, window_len as usize).unwrap_or_default();
        // Reads the window when it can, the process's memory otherwise: after a
        // signal frame the unwind may go on on another stack.
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let end = addr.checked_add(8).ok_or(())?;
            if addr >= sp && end <= sp + window.len() as u64 {
                let off = (addr - sp) as usize;
                return Ok(u64::from_le_bytes(window[off..off + 8].try_into().map_err(|_| ())?));
            }
            mem.read_u64(addr).map_err(|_| ())
        };
        let mut unwind_regs = UnwindRegsX86_64::new(regs.rip, regs.rsp, regs.rbp);
        let mut address = FrameAddress::InstructionPointer(regs.rip);
        let mut signal_frames = 0;
        let mut complete = false;
        for _ in 0..MAX_FRAMES {
            // Returning into a sigreturn trampoline (or stopped inside one): the
            // stack above holds the signal's ucontext; go on from the
            // interrupted instruction, which is exact (not a return address).
            let uc = match address {
                FrameAddress::ReturnAddress(ra) if self.trampolines.contains(&ra.get()) => Some(unwind_regs.sp()),
                FrameAddress::InstructionPointer(ip) if self.in_trampoline(ip) => Some(unwind_regs.sp()),
                _ => None,
            };
            if let Some(uc) = uc {
                signal_frames += 1;
                let Some(int) = interrupted_at(uc, &mut read_stack).filter(|_| signal_frames <= MAX_SIGNAL_FRAMES)
                else {
                    break;
                };
                if let Some(name) = hit(int.rip) {
                    return Some(name);
                }
                unwind_regs = UnwindRegsX86_64::new(int.rip, int.rsp, int.rbp);
                address = FrameAddress::InstructionPointer(int.rip);
                continue;
            }
            match self.unwinder.unwind_frame(address, &mut unwind_regs, &mut self.cache, &mut read_stack) {
                Ok(Some(ra)) => {
                    let Some(next) = FrameAddress::from_return_address(ra) else { break };
                    // A return address points after the call; the call itself
                    // (the frame's position) is one byte earlier.
                    if let Some(name) = hit(ra - 1) {
                        return Some(name);
                    }
                    address = next;
                }
                Ok(None) => {
                    // Trusted only where unwind tables said so: framehop also
                    // ends on a zero frame pointer in code it knows nothing of.
                    let at = address.address_for_lookup();
                    complete = self.code.iter().any(|c| c.contains(&at));
                    break;
                }
                Err(_) => break,
            }
        }
        if complete {
            return None;
        }
        self.fallback_scans += 1;
        self.scan_words(mem, sp, stack_end, &window, ranges)
    }

    /// Where the outermost frame inside a busy range returns to, found by an
    /// exact unwind (no signal frames, no raw scan): the stack slot holding
    /// its return address, that address, and the stack pointer after the
    /// return. `None` when the thread is not in busy code or the unwind is
    /// not exact.
    pub fn return_point(&mut self, mem: &ProcessMemory, regs: &Regs, ranges: &[BusyRange]) -> Option<ReturnPoint> {
        let busy = |addr: u64| ranges.iter().any(|r| r.range.contains(&addr));
        let mut read_stack = |addr: u64| mem.read_u64(addr).map_err(|_| ());
        let mut unwind_regs = UnwindRegsX86_64::new(regs.rip, regs.rsp, regs.rbp);
        let mut address = FrameAddress::InstructionPointer(regs.rip);
        let mut point = None;
        for _ in 0..MAX_FRAMES {
            let here = address.address_for_lookup();
            if self.in_trampoline(here) {
                return None;
            }
            let ra = match self.unwinder.unwind_frame(address, &mut unwind_regs, &mut self.cache, &mut read_stack) {
                Ok(Some(ra)) => ra,
                Ok(None) => break,
                Err(_) => return None,
            };
            if self.trampolines.contains(&ra) {
                return None;
            }
            let cfa = unwind_regs.sp();
            if busy(here) && !busy(ra - 1) {
                point = Some(ReturnPoint { slot: cfa.checked_sub(8)?, ret: ra, cfa });
            }
            address = FrameAddress::from_return_address(ra)?;
        }
        // The slot must hold what the unwind says: else it is not the frame's.
        point.filter(|p| mem.read_u64(p.slot).ok() == Some(p.ret))
    }

    fn scan_words(
        &self,
        mem: &ProcessMemory,
        sp: u64,
        stack_end: u64,
        window: &[u8],
        ranges: &[BusyRange],
    ) -> Option<String> {
        // Inclusive end: a return address right after a tail call sits at the end.
        let hit =
            |word: u64| ranges.iter().find(|r| word >= r.range.start && word <= r.range.end).map(|r| r.name.clone());
        // Stacks to scan: this one, then those that signal frames found on it
        // were interrupted on (a handler on sigaltstack).
        let mut stacks = vec![(sp, stack_end, Some(window.to_vec()))];
        let mut scanned: Vec<Range<u64>> = Vec::new();
        while let Some((start, end, first)) = stacks.pop() {
            if scanned.len() > MAX_SIGNAL_FRAMES {
                break;
            }
            let limit = end.min(start.saturating_add(SCAN_LIMIT));
            let first = first.unwrap_or_default();
            let rest_start = start + first.len() as u64;
            let rest = if limit > rest_start {
                mem.read_vec(rest_start, (limit - rest_start) as usize).unwrap_or_default()
            } else {
                Vec::new()
            };
            scanned.push(start..limit);
            let words: Vec<u64> = first
                .chunks_exact(8)
                .chain(rest.chunks_exact(8))
                .filter_map(|w| w.try_into().ok().map(u64::from_le_bytes))
                .collect();
            for (i, &word) in words.iter().enumerate() {
                if let Some(name) = hit(word) {
                    return Some(name);
                }
                if !self.trampolines.contains(&word) {
                    continue;
                }
                // A return address into a sigreturn trampoline: the ucontext follows it.
                let uc = start + (i as u64 + 1) * 8;
                let mut read = |addr: u64| mem.read_u64(addr).map_err(|_| ());
                let Some(int) = interrupted_at(uc, &mut read) else { continue };
                if let Some(name) = hit(int.rip) {
                    return Some(name);
                }
                let known = scanned.iter().any(|r| r.contains(&int.rsp))
                    || stacks.iter().any(|(s, e, _)| (*s..*e).contains(&int.rsp));
                if known {
                    continue;
                }
                if let Some(m) = self.maps.iter().find(|m| m.contains(int.rsp)) {
                    stacks.push((int.rsp, m.end, None));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping_of(words: &[u64]) -> Mapping {
        let start = words.as_ptr() as u64;
        Mapping {
            start,
            end: start + (words.len() * 8) as u64,
            read: true,
            write: true,
            exec: false,
            private: true,
            offset: 0,
            inode: 0,
            path: String::new(),
        }
    }

    /// The conservative scan of a handler's alternate stack follows the signal
    /// frame on it to the interrupted stack, where the busy function's return
    /// address is (our own memory stands in for the process's).
    #[test]
    fn raw_scan_follows_a_signal_frame_to_the_interrupted_stack() {
        const TRAMPOLINE: u64 = 0x1000_0000;
        let busy = [BusyRange { range: 0x5000_0000..0x5000_0100, name: "check".into() }];
        let mut interrupted = vec![0u64; 64];
        let mut alt = vec![0u64; 64];
        let uc = 4;
        alt[uc - 1] = TRAMPOLINE;
        let gregs = uc + (UC_GREGS / 8) as usize;
        alt[gregs + GREG_RIP as usize] = 0x2000; // interrupted in unrelated code
        alt[gregs + GREG_RSP as usize] = interrupted.as_ptr() as u64 + 16;
        interrupted[10] = 0x5000_0010; // a return address into check, on the interrupted stack
        let mem = ProcessMemory::open(std::process::id() as i32, false).expect("own memory");
        let checker = |trampolines: &[u64], maps: Vec<Mapping>| StackChecker {
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            maps,
            code: Vec::new(),
            trampolines: trampolines.iter().copied().collect(),
            fallback_scans: 0,
            memory: None,
        };
        let maps = vec![mapping_of(&alt), mapping_of(&interrupted)];
        let (sp, end) = (maps[0].start, maps[0].end);
        let scan = |c: &StackChecker| c.scan_words(&mem, sp, end, &[], &busy);
        assert_eq!(scan(&checker(&[TRAMPOLINE], maps.clone())), Some("check".into()));
        // Not a trampoline: nothing leads to the other stack.
        assert_eq!(scan(&checker(&[], maps.clone())), None);
        // The interrupted instruction itself in check.
        interrupted[10] = 0;
        alt[gregs + GREG_RIP as usize] = 0x5000_0020;
        assert_eq!(scan(&checker(&[TRAMPOLINE], maps.clone())), Some("check".into()));
        alt[gregs + GREG_RIP as usize] = 0x2000;
        assert_eq!(scan(&checker(&[TRAMPOLINE], maps)), None);
    }

    #[test]
    fn trampolines_are_found_by_their_code() {
        let mut code = vec![0x90u8; 64];
        code[10..19].copy_from_slice(SIGRETURN_CODE[0]);
        code[40..47].copy_from_slice(SIGRETURN_CODE[1]);
        assert_eq!(find_trampolines(&code), vec![10, 40]);
    }
}
