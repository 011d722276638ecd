//! The stack check: is any thread executing, or about to return into, code
//! that a transition would replace or unmap?
//!
//! Each thread's stack is unwound with the `.eh_frame` unwind tables of every
//! object the process maps (framehop). Where the unwind cannot finish cleanly
//! (code without unwind info, a signal frame it cannot step through, a
//! corrupt frame), every word of the thread's stack that points into a
//! checked range counts as a frame: a false alarm costs a retry, a miss would
//! corrupt the process.

use crate::modules::LoadedModule;
use crate::procfs::{Mapping, ProcessMemory};
use crate::ptrace::Regs;
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use object::{Object, ObjectSection, ObjectSegment};
use std::ops::Range;

/// Bytes of stack read in one go per thread; deeper frames are read word by word.
const STACK_WINDOW: u64 = 32 * 1024;
/// The conservative scan reads at most this much of a thread's stack.
const SCAN_LIMIT: u64 = 8 << 20;
const MAX_FRAMES: usize = 4096;

/// A code range a transition must not find any thread in, and its name.
#[derive(Debug, Clone)]
pub struct BusyRange {
    pub range: Range<u64>,
    pub name: String,
}

pub struct StackChecker {
    unwinder: UnwinderX86_64<Vec<u8>>,
    cache: CacheX86_64,
    maps: Vec<Mapping>,
    /// Whether the last check had to fall back to the raw stack scan.
    pub fallback_scans: u32,
}

fn module_info(data: Vec<u8>) -> Option<(ExplicitModuleSectionInfo<Vec<u8>>, Range<u64>)> {
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
    Some((info, exec_range))
}

impl StackChecker {
    /// Loads the unwind tables of every mapped object and the vDSO. Done
    /// before any thread is stopped, so the pause pays none of it.
    pub fn new(maps: &[Mapping], modules: &[LoadedModule], mem: &ProcessMemory) -> StackChecker {
        let mut unwinder = UnwinderX86_64::new();
        for module in modules {
            let Ok(data) = std::fs::read(&module.file) else { continue };
            let Ok(elf) = hotpatch_elf::TargetElf::parse(&data) else { continue };
            let Some(bias) = module.bias(&elf) else { continue };
            let Some((info, _)) = module_info(data) else { continue };
            unwinder.add_module(Module::new(module.path.clone(), module.start..module.end, bias, info));
        }
        if let Some(vdso) = maps.iter().find(|m| m.path == "[vdso]")
            && let Ok(data) = mem.read_vec(vdso.start, vdso.len() as usize)
            && let Some((info, _)) = module_info(data)
        {
            // The vDSO is linked at 0 and mapped whole: its bias is where it is mapped.
            unwinder.add_module(Module::new("[vdso]".into(), vdso.start..vdso.end, vdso.start, info));
        }
        StackChecker { unwinder, cache: CacheX86_64::new(), maps: maps.to_vec(), fallback_scans: 0 }
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
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            if addr >= sp && addr + 8 <= sp + window.len() as u64 {
                let off = (addr - sp) as usize;
                return Ok(u64::from_le_bytes(window[off..off + 8].try_into().map_err(|_| ())?));
            }
            if addr >= sp && addr + 8 <= stack_end {
                return mem.read_u64(addr).map_err(|_| ());
            }
            Err(())
        };
        let unwind_regs = UnwindRegsX86_64::new(regs.rip, regs.rsp, regs.rbp);
        let mut frames = self.unwinder.iter_frames(regs.rip, unwind_regs, &mut self.cache, &mut read_stack);
        let mut complete = false;
        for _ in 0..MAX_FRAMES {
            match frames.next() {
                Ok(Some(FrameAddress::InstructionPointer(_))) => {}
                Ok(Some(FrameAddress::ReturnAddress(ra))) => {
                    // A return address points after the call; the call itself
                    // (the frame's position) is one byte earlier.
                    if let Some(name) = hit(ra.get() - 1) {
                        return Some(name);
                    }
                }
                Ok(None) => {
                    complete = true;
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

    fn scan_words(
        &self,
        mem: &ProcessMemory,
        sp: u64,
        stack_end: u64,
        window: &[u8],
        ranges: &[BusyRange],
    ) -> Option<String> {
        let limit = stack_end.min(sp.saturating_add(SCAN_LIMIT));
        let rest_start = sp + window.len() as u64;
        let rest = if limit > rest_start {
            mem.read_vec(rest_start, (limit - rest_start) as usize).unwrap_or_default()
        } else {
            Vec::new()
        };
        window.chunks_exact(8).chain(rest.chunks_exact(8)).find_map(|w| {
            let word = u64::from_le_bytes(w.try_into().ok()?);
            // Inclusive end: a return address right after a tail call sits at the end.
            ranges.iter().find(|r| word >= r.range.start && word <= r.range.end).map(|r| r.name.clone())
        })
    }
}
