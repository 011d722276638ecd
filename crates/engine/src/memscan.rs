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

use crate::error::EngineError;
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

pub struct MemoryScanner {
    code: Vec<BusyCode>,
    limit: u64,
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
        let code = busy
            .iter()
            .map(|b| BusyCode {
                range: b.range.clone(),
                bytes: mem.read_vec(b.range.start, (b.range.end - b.range.start) as usize).unwrap_or_default(),
                name: b.name.clone(),
            })
            .collect();
        Ok(MemoryScanner { code, limit: MAX_SCAN_BYTES, last: ScanReport::default() })
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
        let maps = crate::procfs::maps(pid).map_err(|e| EngineError::proc_access(pid, "read maps", e))?;
        let targets: Vec<&Mapping> = maps.iter().filter(|m| scannable(m, stack_pointers)).collect();
        let total: u64 = targets.iter().map(|m| m.len()).sum();
        if total > self.limit {
            return Err(EngineError::ScanTooLarge { pid, bytes: total, limit: self.limit });
        }
        let mut report = ScanReport { bytes: 0, mappings: targets.len(), micros: 0 };
        let mut hit = None;
        let mut buf = vec![0u8; CHUNK as usize];
        'maps: for m in targets {
            let mut at = m.start;
            while at < m.end {
                let len = CHUNK.min(m.end - at);
                // A page that cannot be read (gone meanwhile) holds nothing to find.
                if mem.read(at, &mut buf[..len as usize]).is_ok() {
                    report.bytes += len;
                    if let Some(found) = self.in_chunk(at, &buf[..len as usize]) {
                        hit = Some(found);
                        break 'maps;
                    }
                }
                at += len;
            }
        }
        report.micros = started.elapsed().as_micros() as u64;
        self.last = report;
        Ok(hit)
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
            last: ScanReport::default(),
        };
        let mut chunk = vec![0u8; 64];
        chunk[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        assert_eq!(scanner.in_chunk(0x7000, &chunk), None, "a function pointer is no frame");
        chunk[40..48].copy_from_slice(&0x1006u64.to_le_bytes());
        assert_eq!(scanner.in_chunk(0x7000, &chunk), Some(ScanHit { at: 0x7028, name: "f".into() }));
    }
}
