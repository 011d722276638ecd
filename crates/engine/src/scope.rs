//! The process's own symbol lookup scope, as the dynamic linker built it.
//!
//! ld.so binds a name to the first definition in the global scope: the
//! executable, then the `LD_PRELOAD` objects, then `DT_NEEDED` breadth first.
//! That is the order of its `link_map` chain (`r_debug.r_map`), which we read
//! from the process: the executable's `PT_DYNAMIC` is found through the auxv
//! `AT_PHDR`, its `DT_DEBUG` entry holds the address of `r_debug`. Address
//! order in `/proc/PID/maps` is not that order: libc is often mapped below a
//! preloaded library that interposes its functions.
//!
//! Objects `dlopen`ed later follow in the chain in load order; ld.so searches
//! an `RTLD_LOCAL` one only from its own dependants, so they come after the
//! initial scope here, as a fallback. Objects the chain does not show (no
//! `DT_DEBUG`, a static executable, an unreadable chain) follow in address
//! order, as before.

use crate::modules::LoadedModule;
use crate::procfs::ProcessMemory;
use std::collections::HashSet;

const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const PT_DYNAMIC: u32 = 2;
const PT_PHDR: u32 = 6;
const DT_NULL: u64 = 0;
const DT_DEBUG: u64 = 21;
/// Bounds on what is read from the (untrusted) process.
const MAX_PHNUM: u64 = 256;
const MAX_DYN: u64 = 1024;
const MAX_CHAIN: usize = 4096;

/// One `link_map` of the chain: where the object's `.dynamic` is and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMapEntry {
    pub l_addr: u64,
    pub l_ld: u64,
    pub name: String,
}

/// Reads process memory; `None` when the address is not readable.
pub trait Reader {
    fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>>;
    fn u64_at(&self, addr: u64) -> Option<u64> {
        let b = self.bytes(addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

impl Reader for ProcessMemory {
    fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.read_vec(addr, len).ok()
    }
}

/// `(type, value)` pairs of an auxv image.
fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    auxv.chunks_exact(16).find_map(|e| {
        let k = u64::from_le_bytes(e[..8].try_into().ok()?);
        (k == key).then(|| u64::from_le_bytes(e[8..].try_into().unwrap_or_default()))
    })
}

/// The run-time address of the executable's `r_debug`, from its `DT_DEBUG`.
pub fn r_debug_address(auxv: &[u8], mem: &impl Reader) -> Option<u64> {
    let phdr = auxv_value(auxv, AT_PHDR)?;
    let phent = auxv_value(auxv, AT_PHENT)?;
    let phnum = auxv_value(auxv, AT_PHNUM)?;
    if phent < 56 || phnum > MAX_PHNUM {
        return None;
    }
    let table = mem.bytes(phdr, (phent * phnum) as usize)?;
    let headers: Vec<(u32, u64)> = table
        .chunks_exact(phent as usize)
        .map(|h| {
            (u32::from_le_bytes([h[0], h[1], h[2], h[3]]), u64::from_le_bytes(h[16..24].try_into().unwrap_or_default()))
        })
        .collect();
    // A PIE's load bias is where its program headers are minus where they were linked.
    let bias = headers.iter().find(|(t, _)| *t == PT_PHDR).map_or(0, |(_, vaddr)| phdr.wrapping_sub(*vaddr));
    let dynamic = bias.wrapping_add(headers.iter().find(|(t, _)| *t == PT_DYNAMIC)?.1);
    for i in 0..MAX_DYN {
        let entry = dynamic.checked_add(i * 16)?;
        match mem.u64_at(entry)? {
            DT_NULL => return None,
            DT_DEBUG => return mem.u64_at(entry + 8).filter(|&a| a != 0),
            _ => {}
        }
    }
    None
}

/// The `link_map` chain from `r_debug` (`r_map` at offset 8), in order.
pub fn link_map_chain(r_debug: u64, mem: &impl Reader) -> Vec<LinkMapEntry> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut node = mem.u64_at(r_debug.wrapping_add(8)).unwrap_or(0);
    while node != 0 && out.len() < MAX_CHAIN && seen.insert(node) {
        // struct link_map { l_addr, l_name, l_ld, l_next, l_prev, ... }
        let Some(raw) = mem.bytes(node, 32) else { break };
        let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let name = mem.bytes(word(1), 256).map(|b| c_string(&b)).unwrap_or_default();
        out.push(LinkMapEntry { l_addr: word(0), l_ld: word(2), name });
        node = word(3);
    }
    out
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `modules` in the process's lookup order: those the chain shows, in its
/// order (matched by where their `.dynamic` is), then the rest as given.
pub fn in_lookup_order(modules: &[LoadedModule], chain: &[LinkMapEntry]) -> Vec<LoadedModule> {
    let mut order: Vec<usize> = Vec::with_capacity(modules.len());
    for entry in chain {
        let found = modules.iter().position(|m| m.mappings.iter().any(|map| map.contains(entry.l_ld)));
        if let Some(i) = found.filter(|i| !order.contains(i)) {
            order.push(i);
        }
    }
    order.extend((0..modules.len()).filter(|i| !order.contains(i)).collect::<Vec<_>>());
    order.into_iter().map(|i| modules[i].clone()).collect()
}

/// The process's auxv `AT_PHDR`: where the executable's program headers are
/// mapped, which tells the executable apart from the libraries.
pub fn main_phdr(pid: i32) -> Option<u64> {
    let auxv = std::fs::read(format!("{}/auxv", crate::procfs::proc_dir(pid))).ok()?;
    auxv_value(&auxv, AT_PHDR)
}

/// The `link_map` chain of process `pid`, empty if it cannot be read.
pub fn process_chain(pid: i32, mem: &ProcessMemory) -> Vec<LinkMapEntry> {
    let auxv = match std::fs::read(format!("{}/auxv", crate::procfs::proc_dir(pid))) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(pid, error = %e, "auxv unreadable; symbols bound in address order");
            return Vec::new();
        }
    };
    match r_debug_address(&auxv, mem) {
        Some(r_debug) => link_map_chain(r_debug, mem),
        None => {
            tracing::debug!(pid, "no r_debug (static, or DT_DEBUG unset); symbols bound in address order");
            Vec::new()
        }
    }
}

/// The objects of process `pid` other than the target, in the order ld.so
/// would search them for a symbol.
pub fn lookup_scope(pid: i32, mem: &ProcessMemory, modules: &[LoadedModule], target_inode: u64) -> Vec<LoadedModule> {
    let others: Vec<LoadedModule> = modules.iter().filter(|m| m.inode != target_inode).cloned().collect();
    let ordered = in_lookup_order(&others, &process_chain(pid, mem));
    tracing::debug!(order = ?ordered.iter().map(|m| m.file_name()).collect::<Vec<_>>(), "lookup scope");
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Sparse fake memory: bytes at addresses.
    struct Fake(BTreeMap<u64, u8>);

    impl Fake {
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
        }
        fn put_words(&mut self, addr: u64, words: &[u64]) {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.put(addr, &bytes);
        }
    }

    impl Reader for Fake {
        fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            (0..len as u64).map(|i| self.0.get(&(addr + i)).copied()).collect::<Option<Vec<u8>>>().or_else(|| {
                // Strings may be read past their end: give what is there up to a gap.
                let got: Vec<u8> = (0..len as u64).map_while(|i| self.0.get(&(addr + i)).copied()).collect();
                (!got.is_empty()).then_some(got)
            })
        }
    }

    fn phdr(kind: u32, vaddr: u64) -> Vec<u8> {
        let mut h = vec![0u8; 56];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[16..24].copy_from_slice(&vaddr.to_le_bytes());
        h
    }

    #[test]
    fn finds_r_debug_and_walks_the_chain_of_a_pie() {
        let bias = 0x5555_0000_0000u64;
        let mut mem = Fake(BTreeMap::new());
        let table: Vec<u8> = [phdr(PT_PHDR, 0x40), phdr(1, 0), phdr(PT_DYNAMIC, 0x3000)].concat();
        mem.put(bias + 0x40, &table);
        mem.put_words(bias + 0x3000, &[1, 5, DT_DEBUG, 0x7000, DT_NULL, 0]);
        // r_debug { r_version, r_map }; link_maps for "", "/x/libpre.so", "/lib/libc.so.6", looping back.
        mem.put_words(0x7000, &[1, 0x8000]);
        mem.put_words(0x8000, &[bias, 0x9000, bias + 0x3000, 0x8100]);
        mem.put_words(0x8100, &[0x7f00, 0x9010, 0x7f10_0000, 0x8200]);
        mem.put_words(0x8200, &[0x7e00, 0x9030, 0x7e10_0000, 0x8000]);
        mem.put(0x9000, b"\0");
        mem.put(0x9010, b"/x/libpre.so\0");
        mem.put(0x9030, b"/lib/libc.so.6\0");
        let auxv: Vec<u8> = [(AT_PHDR, bias + 0x40), (AT_PHENT, 56), (AT_PHNUM, 3), (0, 0)]
            .iter()
            .flat_map(|(k, v)| [k.to_le_bytes(), v.to_le_bytes()].concat())
            .collect();
        let r_debug = r_debug_address(&auxv, &mem).expect("r_debug");
        assert_eq!(r_debug, 0x7000);
        let chain = link_map_chain(r_debug, &mem);
        let names: Vec<&str> = chain.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["", "/x/libpre.so", "/lib/libc.so.6"], "a loop ends the walk");
        assert_eq!(chain[1].l_ld, 0x7f10_0000);
    }

    #[test]
    fn no_debug_entry_or_garbage_gives_nothing() {
        let mut mem = Fake(BTreeMap::new());
        mem.put(0x1000, &[phdr(PT_DYNAMIC, 0x2000), phdr(PT_PHDR, 0x1000)].concat());
        mem.put_words(0x2000, &[1, 5, DT_NULL, 0]);
        let auxv: Vec<u8> = [(AT_PHDR, 0x1000u64), (AT_PHENT, 56), (AT_PHNUM, 2)]
            .iter()
            .flat_map(|(k, v)| [k.to_le_bytes(), v.to_le_bytes()].concat())
            .collect();
        assert_eq!(r_debug_address(&auxv, &mem), None);
        assert_eq!(r_debug_address(&[1, 2, 3], &mem), None);
        assert!(link_map_chain(0xdead_0000, &mem).is_empty());
    }
}
