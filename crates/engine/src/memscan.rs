//! The opt-in conservative scan for user-level stacks (`--scan-memory`).
//!
//! The stack check unwinds thread stacks only. A coroutine, fiber or green
//! thread suspended inside a function being replaced keeps its return
//! addresses on a stack of its own, somewhere in the process's writable
//! memory (heap, `.bss`, an anonymous mapping). With the scan on, every
//! 8-byte word of the process's private writable mappings (except the thread
//! stacks, which are unwound exactly) is read while the process is stopped;
//! a word that is a return address into a busy range (it points past the
//! range's start, right after a call instruction) makes the transition busy,
//! like a frame on a thread stack.
//!
//! Bounded: the writable memory to read is summed from the maps first, and a
//! process with more than [`MAX_SCAN_BYTES`] is refused before anything is
//! stopped (the scan runs inside the pause, so it is the pause's cost).
//! Shared mappings are not read.
//!
//! A process can instead declare where its user-level stacks are, and then
//! they are checked by default, at the cost of those ranges only: it defines
//! (exported, or in the executable's `.symtab`) the object
//!
//! ```c
//! struct hotpatch_user_stacks {
//!     uint32_t magic;   /* 0x53555048, "HPUS" */
//!     uint32_t count;   /* entries of ranges in use, at most 65536 */
//!     struct { uintptr_t start, end; } *ranges;
//! } hotpatch_user_stacks;
//! ```
//!
//! where each `[start, end)` is a stack not running on any thread right now
//! (`start` may be the saved stack pointer of a suspended context, so only
//! its used part is read). It is read while the process is stopped; a
//! declaration that cannot be read or makes no sense refuses the transition.

use crate::error::EngineError;
use crate::modules::LoadedModule;
use crate::procfs::{Mapping, ProcessMemory};
use crate::stack::BusyRange;
use std::ops::Range;
use std::time::Instant;

/// At most this much writable memory is read in one scan.
pub const MAX_SCAN_BYTES: u64 = 512 << 20;
const CHUNK: u64 = 1 << 20;

/// What the last scan (the one of the attempt that switched) cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanReport {
    pub bytes: u64,
    pub mappings: usize,
    /// Wall time of the scan, inside the pause.
    pub micros: u64,
}

/// A return address found in writable memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanHit {
    /// Where the word is.
    pub at: u64,
    pub name: String,
}

struct BusyCode {
    range: Range<u64>,
    /// The code of the range as it was before the stop, to tell a return
    /// address (after a call) from another pointer into it.
    bytes: Vec<u8>,
    name: String,
}

/// The name of the object by which a process declares its user-level stacks.
pub const USER_STACKS_SYMBOL: &str = "hotpatch_user_stacks";
const USER_STACKS_MAGIC: u32 = 0x5355_5048;
const MAX_DECLARED_STACKS: u64 = 65536;

/// What a scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Every private writable mapping but the thread stacks (`--scan-memory`).
    Writable,
    /// The stacks declared in `hotpatch_user_stacks`, at this address.
    Declared(u64),
}

pub struct MemoryScanner {
    code: Vec<BusyCode>,
    limit: u64,
    scope: Scope,
    pub last: ScanReport,
}

fn scannable(m: &Mapping, stack_pointers: &[u64]) -> bool {
    m.read && m.write && m.private && !m.path.starts_with("[v") && !stack_pointers.iter().any(|&sp| m.contains(sp))
}

/// Writable memory a scan would read now (thread stacks are not known
/// before the stop, so they count here).
fn writable_bytes(maps: &[Mapping]) -> u64 {
    maps.iter().filter(|m| scannable(m, &[])).map(Mapping::len).sum()
}

impl MemoryScanner {
    /// How a hit was found, for the busy message.
    pub fn source(&self) -> &'static str {
        match self.scope {
            Scope::Writable => "in writable memory: a user-level stack, found by --scan-memory",
            Scope::Declared(_) => "in a user-level stack the process declares (hotpatch_user_stacks)",
        }
    }

    /// Reads the busy code and refuses a process with more writable memory
    /// than [`MAX_SCAN_BYTES`], before anything is stopped.
    pub fn prepare(
        pid: i32,
        maps: &[Mapping],
        mem: &ProcessMemory,
        busy: &[BusyRange],
    ) -> Result<MemoryScanner, EngineError> {
        let bytes = writable_bytes(maps);
        if bytes > MAX_SCAN_BYTES {
            return Err(EngineError::ScanTooLarge { pid, bytes, limit: MAX_SCAN_BYTES });
        }
        Ok(MemoryScanner::with_scope(mem, busy, Scope::Writable))
    }

    fn with_scope(mem: &ProcessMemory, busy: &[BusyRange], scope: Scope) -> MemoryScanner {
        let code = busy
            .iter()
            .map(|b| BusyCode {
                range: b.range.clone(),
                bytes: mem.read_vec(b.range.start, (b.range.end - b.range.start) as usize).unwrap_or_default(),
                name: b.name.clone(),
            })
            .collect();
        MemoryScanner { code, limit: MAX_SCAN_BYTES, scope, last: ScanReport::default() }
    }

    /// The scanner a transition needs: all writable memory when asked to
    /// (`scan_memory`), else the stacks the process declares, if it does.
    pub fn for_process(
        pid: i32,
        maps: &[Mapping],
        modules: &[LoadedModule],
        mem: &ProcessMemory,
        busy: &[BusyRange],
        scan_memory: bool,
    ) -> Result<Option<MemoryScanner>, EngineError> {
        if scan_memory {
            return MemoryScanner::prepare(pid, maps, mem, busy).map(Some);
        }
        Ok(declared_stacks_at(modules).map(|addr| {
            tracing::debug!(addr = format_args!("0x{addr:x}"), "the process declares its user-level stacks");
            MemoryScanner::with_scope(mem, busy, Scope::Declared(addr))
        }))
    }

    /// Scans the stopped process's writable memory, thread stacks (the
    /// mappings holding `stack_pointers`) excepted.
    pub fn find(
        &mut self,
        pid: i32,
        mem: &ProcessMemory,
        stack_pointers: &[u64],
    ) -> Result<Option<ScanHit>, EngineError> {
        let started = Instant::now();
        let targets = match self.scope {
            Scope::Writable => {
                let maps = crate::procfs::maps(pid).map_err(|e| EngineError::proc_access(pid, "read maps", e))?;
                maps.iter().filter(|m| scannable(m, stack_pointers)).map(|m| m.start..m.end).collect()
            }
            Scope::Declared(addr) => declared_ranges(mem, addr)
                .map_err(|problem| EngineError::UserStacks { pid, problem: problem.to_string() })?,
        };
        let total: u64 = targets.iter().map(|r| r.end - r.start).sum();
        if total > self.limit {
            return Err(EngineError::ScanTooLarge { pid, bytes: total, limit: self.limit });
        }
        let mut report = ScanReport { bytes: 0, mappings: targets.len(), micros: 0 };
        let hit = self.scan_ranges(mem, &targets, &mut report);
        report.micros = started.elapsed().as_micros() as u64;
        self.last = report;
        match (hit, self.scope) {
            // A declared stack is part of the process's promise: unreadable is refused.
            (Err(at), Scope::Declared(_)) => Err(EngineError::UserStacks {
                pid,
                problem: format!("the declared stack memory at 0x{at:x} cannot be read"),
            }),
            (Err(_), Scope::Writable) => Ok(None),
            (Ok(hit), _) => Ok(hit),
        }
    }

    /// Reads `ranges` in chunks; `Err` with the address of a chunk that could
    /// not be read (after scanning the rest; in writable memory a page may
    /// be gone meanwhile, holding nothing to find).
    fn scan_ranges(
        &self,
        mem: &ProcessMemory,
        ranges: &[Range<u64>],
        report: &mut ScanReport,
    ) -> Result<Option<ScanHit>, u64> {
        let mut buf = vec![0u8; CHUNK as usize];
        let mut unreadable = None;
        for r in ranges {
            let mut at = r.start & !7;
            while at < r.end {
                let len = CHUNK.min(r.end - at);
                match mem.read(at, &mut buf[..len as usize]) {
                    Ok(()) => {
                        report.bytes += len;
                        if let Some(found) = self.in_chunk(at, &buf[..len as usize]) {
                            return Ok(Some(found));
                        }
                    }
                    Err(_) => unreadable = unreadable.or(Some(at)),
                }
                at += len;
            }
        }
        unreadable.map_or(Ok(None), Err)
    }

    fn in_chunk(&self, base: u64, chunk: &[u8]) -> Option<ScanHit> {
        let lo = self.code.iter().map(|c| c.range.start).min()?;
        let hi = self.code.iter().map(|c| c.range.end).max()?;
        for (i, word) in chunk.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(word.try_into().unwrap_or_default());
            if v <= lo || v >= hi {
                continue;
            }
            if let Some(code) = self.code.iter().find(|c| c.range.contains(&v) && returns_into(c, v)) {
                return Some(ScanHit { at: base + 8 * i as u64, name: code.name.clone() });
            }
        }
        None
    }
}

/// The run-time address of `hotpatch_user_stacks`, if an object of the
/// process defines it (exported, or in the executable's `.symtab`).
fn declared_stacks_at(modules: &[LoadedModule]) -> Option<u64> {
    use object::Object;
    modules.iter().find_map(|m| {
        let data = std::fs::read(&m.file).ok()?;
        let file = object::read::elf::ElfFile64::<object::Endianness>::parse(data.as_slice()).ok()?;
        let value = defined_in(file.dynamic_symbol_table()).or_else(|| defined_in(file.symbol_table()))?;
        let bias = m.bias(&hotpatch_elf::TargetElf::parse(&data).ok()?)?;
        Some(bias.wrapping_add(value))
    })
}

fn defined_in<'d, T: object::ObjectSymbolTable<'d>>(table: Option<T>) -> Option<u64> {
    use object::ObjectSymbol;
    table?.symbols().find(|s| s.name() == Ok(USER_STACKS_SYMBOL) && !s.is_undefined()).map(|s| s.address())
}

/// The stacks a process declares, read (while it is stopped) from its
/// `hotpatch_user_stacks` at `addr`.
fn declared_ranges(mem: &ProcessMemory, addr: u64) -> Result<Vec<Range<u64>>, &'static str> {
    let head = mem.read_vec(addr, 16).map_err(|_| "hotpatch_user_stacks cannot be read")?;
    let word = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let count = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
    if magic != USER_STACKS_MAGIC {
        return Err("hotpatch_user_stacks has the wrong magic number (want 0x53555048)");
    }
    if count > MAX_DECLARED_STACKS {
        return Err("hotpatch_user_stacks declares more than 65536 stacks");
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let table = mem.read_vec(word(&head, 8), (count * 16) as usize).map_err(|_| "its ranges cannot be read")?;
    let ranges: Vec<Range<u64>> = table.chunks_exact(16).map(|e| word(e, 0)..word(e, 8)).collect();
    if ranges.iter().any(|r| r.start >= r.end) {
        return Err("a declared stack range is empty or reversed");
    }
    Ok(ranges)
}

/// Whether `v` can be a return address into `code`: past its entry (a
/// pointer to the entry is a function pointer), right after a call (`e8
/// rel32`, or `ff /2` with a 0 to 5 byte operand). Code that could not be
/// read counts every address as one.
fn returns_into(code: &BusyCode, v: u64) -> bool {
    if v == code.range.start {
        return false;
    }
    if code.bytes.is_empty() {
        return true;
    }
    let off = (v - code.range.start) as usize;
    let before = |n: usize| off.checked_sub(n).and_then(|i| code.bytes.get(i)).copied();
    if before(5) == Some(0xe8) {
        return true;
    }
    // ff /2: call through a register or memory; the ModRM byte follows the ff.
    [2usize, 3, 4, 6, 7].iter().any(|&n| before(n) == Some(0xff) && before(n - 1).is_some_and(|m| (m >> 3) & 7 == 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> BusyCode {
        BusyCode { range: 0x1000..0x1000 + bytes.len() as u64, bytes: bytes.to_vec(), name: "f".into() }
    }

    #[test]
    fn return_addresses_follow_calls() {
        // push rbp; call rel32; mov; call *%rax; ret
        let c = code(&[0x55, 0xe8, 0, 0, 0, 0, 0x89, 0xc3, 0xff, 0xd0, 0xc3]);
        assert!(returns_into(&c, 0x1006), "after call rel32");
        assert!(returns_into(&c, 0x100a), "after call *%rax");
        assert!(!returns_into(&c, 0x1000), "the entry is a function pointer");
        assert!(!returns_into(&c, 0x1008), "not after a call");
        assert!(returns_into(&BusyCode { bytes: vec![], ..c }, 0x1008), "unknown code: conservative");
    }

    #[test]
    fn words_found_in_a_chunk() {
        let scanner = MemoryScanner {
            code: vec![code(&[0x55, 0xe8, 0, 0, 0, 0, 0xc3])],
            limit: MAX_SCAN_BYTES,
            scope: Scope::Writable,
            last: ScanReport::default(),
        };
        let mut chunk = vec![0u8; 64];
        chunk[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        assert_eq!(scanner.in_chunk(0x7000, &chunk), None, "a function pointer is no frame");
        chunk[40..48].copy_from_slice(&0x1006u64.to_le_bytes());
        assert_eq!(scanner.in_chunk(0x7000, &chunk), Some(ScanHit { at: 0x7028, name: "f".into() }));
    }
}
