//! Where the process's thread-local variables live, for payloads that use
//! them: each variable's module id (its `dtv` index), its offset in that
//! module's TLS block and, for a module in static TLS, its offset from the
//! thread pointer.
//!
//! - The executable: glibc gives it module id 1 and places its block first
//!   below the thread pointer, at `roundup(memsz - firstbyte, align) +
//!   firstbyte` (`_dl_determine_tlsoffset`, x86_64's TLS_TCB_AT_TP layout).
//!   Only trusted in a process that maps glibc's dynamic linker (`ld-linux*`):
//!   musl and static executables lay TLS out otherwise, and are refused.
//! - A shared library: the dynamic linker wrote its module id into its own
//!   GOT (`R_X86_64_DTPMOD64` relocations of its own variables) and, if it
//!   uses initial-exec access itself, the offsets from the thread pointer
//!   (`R_X86_64_TPOFF64`); both are read back from the process. A library
//!   without them cannot be reached (refused, naming the variable and why).

use crate::modules::LoadedModule;
use crate::procfs::ProcessMemory;
use hotpatch_link::TlsSymbol;
use object::read::elf::{ElfFile64, ProgramHeader, Sym};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, SymbolIndex};
use std::collections::HashMap;

const R_X86_64_DTPMOD64: u32 = 16;
const R_X86_64_TPOFF64: u32 = 18;

/// TLS facts of one module.
#[derive(Debug, Clone, Copy)]
struct ModuleTls {
    /// 0 if not known.
    module_id: u64,
    /// Where its block starts relative to the thread pointer (static TLS).
    block_tp: Option<i64>,
}

pub struct TlsResolver<'a> {
    mem: &'a ProcessMemory,
    /// The target first (with its debug file, for a stripped target's
    /// locals), then the other objects in lookup order.
    target: &'a LoadedModule,
    target_files: Vec<&'a [u8]>,
    others: &'a [LoadedModule],
    /// auxv `AT_PHDR`: the executable is the module that maps it.
    main_phdr: Option<u64>,
    modules: HashMap<u64, Result<ModuleTls, String>>,
    /// The manifest's proven symbols: for a thread-local variable of the
    /// target, its offset in the target's block (a stripped baseline's
    /// file-local variables have no other name).
    baseline: HashMap<String, u64>,
}

impl<'a> TlsResolver<'a> {
    pub fn new(
        mem: &'a ProcessMemory,
        target: &'a LoadedModule,
        target_files: Vec<&'a [u8]>,
        others: &'a [LoadedModule],
        main_phdr: Option<u64>,
    ) -> TlsResolver<'a> {
        TlsResolver { mem, target, target_files, others, main_phdr, modules: HashMap::new(), baseline: HashMap::new() }
    }

    /// Binds names the builder proved in the baseline (manifest `symbols`)
    /// before any lookup: for thread-local variables the value is the offset
    /// in the target's own block, as the baseline's `st_value` gives it.
    pub fn bind_baseline(&mut self, symbols: impl IntoIterator<Item = (String, u64)>) {
        self.baseline.extend(symbols);
    }

    /// Where thread-local variable `name` lives, or why it cannot be used.
    pub fn resolve(&mut self, name: &str) -> Result<TlsSymbol, String> {
        let in_target = match self.baseline.get(name) {
            Some(&offset) => Some(Ok(offset)),
            None => self.target_files.iter().find_map(|data| tls_symbol(data, name, true).transpose()),
        };
        let (module, offset) = match in_target {
            Some(found) => (self.target, found?),
            None => self
                .others
                .iter()
                .find_map(|m| {
                    let data = std::fs::read(&m.file).ok()?;
                    tls_symbol(&data, name, false).ok().flatten().map(|off| (m, off))
                })
                .ok_or_else(|| format!("no object of the process defines a thread-local variable {name}"))?,
        };
        let key = module.inode;
        if !self.modules.contains_key(&key) {
            let facts = self.module_tls(module);
            self.modules.insert(key, facts);
        }
        let tls = self.modules[&key].clone().map_err(|why| format!("{name} is in {}: {why}", module.path))?;
        Ok(TlsSymbol {
            module_id: tls.module_id,
            offset,
            tp_offset: tls.block_tp.map(|b| b.wrapping_add(offset as i64)),
        })
    }

    fn module_tls(&self, module: &LoadedModule) -> Result<ModuleTls, String> {
        let data = module.read_file().map_err(|e| e.to_string())?;
        let segment = tls_segment(&data).ok_or("it has no TLS segment")?;
        let is_main = self.main_phdr.is_some_and(|a| module.mappings.iter().any(|m| m.contains(a)));
        if is_main {
            // The layout below is glibc's dynamic linker's; musl's or a static
            // executable's differ, and a wrong offset would corrupt memory.
            let glibc = self.others.iter().any(|m| m.file_name().starts_with("ld-linux"));
            if !glibc {
                return Err("the process does not run glibc's dynamic linker (ld-linux), whose TLS layout is the only one known".into());
            }
            return Ok(ModuleTls { module_id: 1, block_tp: Some(-(executable_tls_offset(segment) as i64)) });
        }
        let elf = hotpatch_elf::TargetElf::parse(&data).map_err(|e| e.to_string())?;
        let bias = module.bias(&elf).ok_or("cannot tell where it is loaded")?;
        let facts = from_own_got(&data, bias, self.mem);
        tracing::debug!(module = %module.path, ?facts, "TLS of a shared library");
        match facts {
            ModuleTls { module_id: 0, block_tp: None } => Err(
                "its module id and TLS offset cannot be read from the process (it has no TLS relocations of its own)"
                    .into(),
            ),
            facts => Ok(facts),
        }
    }
}

/// `(p_vaddr, p_memsz, p_align)` of the object's `PT_TLS`.
fn tls_segment(data: &[u8]) -> Option<(u64, u64, u64)> {
    let file = ElfFile64::<Endianness>::parse(data).ok()?;
    let endian = file.endian();
    file.elf_program_headers()
        .iter()
        .find(|p| p.p_type(endian) == object::elf::PT_TLS)
        .map(|p| (p.p_vaddr(endian), p.p_memsz(endian), p.p_align(endian).max(1)))
}

/// How far below the thread pointer glibc puts the executable's TLS block:
/// it is the first module laid out (offset 0 so far).
fn executable_tls_offset((vaddr, memsz, align): (u64, u64, u64)) -> u64 {
    let firstbyte = vaddr.wrapping_neg() & (align - 1);
    (memsz.saturating_sub(firstbyte)).div_ceil(align) * align + firstbyte
}

/// The offset in its module's block of thread-local variable `name`, if the
/// object defines it. `locals`: also `.symtab` and local symbols (the target).
fn tls_symbol(data: &[u8], name: &str, locals: bool) -> Result<Option<u64>, String> {
    let Ok(file) = ElfFile64::<Endianness>::parse(data) else { return Ok(None) };
    let mut found: Vec<u64> = Vec::new();
    let tables = [locals.then(|| file.symbol_table()).flatten(), file.dynamic_symbol_table()];
    for table in tables.into_iter().flatten() {
        for sym in table.symbols() {
            let raw = sym.elf_symbol();
            let defined = raw.st_shndx(file.endian()) != object::elf::SHN_UNDEF;
            if raw.st_type() == object::elf::STT_TLS && defined && (locals || !sym.is_local()) && sym.name() == Ok(name)
            {
                found.push(sym.address());
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(format!("{name} names {} different thread-local variables in the target", found.len())),
    }
}

/// Module id and block offset of a shared library, from the GOT slots the
/// dynamic linker filled for the library's own variables.
fn from_own_got(data: &[u8], bias: u64, mem: &ProcessMemory) -> ModuleTls {
    let mut facts = ModuleTls { module_id: 0, block_tp: None };
    let Ok(file) = ElfFile64::<Endianness>::parse(data) else { return facts };
    let dynsym = file.dynamic_symbol_table();
    // (value, defined here) of a dynamic symbol; index 0 is "this module".
    let own = |index: u32| -> Option<u64> {
        if index == 0 {
            return Some(0);
        }
        let sym = dynsym.as_ref()?.symbol_by_index(SymbolIndex(index as usize)).ok()?;
        (!sym.is_undefined()).then(|| sym.address())
    };
    let Some(section) = file.section_by_name(".rela.dyn") else { return facts };
    let Ok(bytes) = section.data() else { return facts };
    for rela in bytes.chunks_exact(24) {
        let word = |i: usize| u64::from_le_bytes(rela[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let (offset, info, addend) = (word(0), word(1), word(2) as i64);
        let (sym, r_type) = ((info >> 32) as u32, info as u32);
        if r_type != R_X86_64_DTPMOD64 && r_type != R_X86_64_TPOFF64 {
            continue;
        }
        let (Some(value), Ok(slot)) = (own(sym), mem.read_u64(bias.wrapping_add(offset))) else { continue };
        if r_type == R_X86_64_DTPMOD64 && facts.module_id == 0 {
            facts.module_id = slot;
        } else if r_type == R_X86_64_TPOFF64 && facts.block_tp.is_none() {
            // ld.so wrote st_value + addend - l_tls_offset.
            facts.block_tp = Some((slot as i64).wrapping_sub(value as i64).wrapping_sub(addend));
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_block_offset_follows_glibc() {
        // 16-byte block aligned 8 at an aligned address: right below the TCB.
        assert_eq!(executable_tls_offset((0x3df0, 16, 8)), 16);
        // 12 bytes aligned 16: rounded up to the alignment.
        assert_eq!(executable_tls_offset((0x3de0, 12, 16)), 16);
        // A misaligned start keeps its misalignment below the thread pointer.
        assert_eq!(executable_tls_offset((0x3de4, 12, 16)), 12);
        assert_eq!(executable_tls_offset((0x3de4, 40, 16)), 44);
    }
}
