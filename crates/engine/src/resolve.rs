//! Resolving the names a payload references to addresses in the target
//! process: first the target itself (all its symbols, local ones included),
//! then what other loaded objects export (libc and friends), searched in the
//! order the caller gives: the process's lookup scope ([`crate::scope`]).

use crate::modules::LoadedModule;
use hotpatch_elf::{SymbolKind, SymbolTable, TargetElf};
use object::read::elf::Sym;
use object::{Object, ObjectSection, ObjectSymbol, SymbolSection};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
struct Export {
    address: u64,
    ifunc: bool,
    hidden_version: bool,
}

/// Exported, defined symbols of one loaded object, at run-time addresses.
struct Exports {
    bias: u64,
    build_id: Option<Vec<u8>>,
    by_name: HashMap<String, Export>,
}

fn exports_of(module: &LoadedModule) -> Option<Exports> {
    let data = std::fs::read(&module.file).ok()?;
    let elf = TargetElf::parse(&data).ok()?;
    let bias = module.bias(&elf)?;
    let file = object::read::elf::ElfFile64::<object::Endianness>::parse(data.as_slice()).ok()?;
    let endian = file.endian();
    // .gnu.version: one u16 per dynamic symbol; bit 15 marks a non-default
    // (hidden) version such as memcpy@GLIBC_2.2.5 beside memcpy@@GLIBC_2.14.
    let versym: Vec<u16> = file
        .section_by_name(".gnu.version")
        .and_then(|s| s.data().ok())
        .map(|d| d.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
        .unwrap_or_default();
    let mut by_name: HashMap<String, Export> = HashMap::new();
    for sym in file.dynamic_symbols() {
        if !matches!(sym.section(), SymbolSection::Section(_)) || sym.is_local() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let raw = sym.elf_symbol();
        // ld.so never binds another object's reference to a hidden or internal symbol.
        if matches!(raw.st_visibility(), object::elf::STV_HIDDEN | object::elf::STV_INTERNAL) {
            continue;
        }
        let export = Export {
            address: bias.wrapping_add(raw.st_value(endian)),
            ifunc: raw.st_type() == object::elf::STT_GNU_IFUNC,
            hidden_version: versym.get(sym.index().0).is_some_and(|v| v & 0x8000 != 0),
        };
        match by_name.get(name) {
            Some(prev) if !prev.hidden_version => {}
            _ => {
                by_name.insert(name.to_owned(), export);
            }
        }
    }
    Some(Exports { bias, build_id: module.build_id.clone(), by_name })
}

/// Resolves an IFUNC the way the dynamic linker would for the target, by
/// asking our own copy of the same library (same build-id, same CPU): the
/// target's choice of implementation is the one our process made.
fn resolve_ifunc_locally(name: &str, target_exports: &Exports, own: &[LoadedModule]) -> Option<u64> {
    let build_id = target_exports.build_id.as_ref()?;
    let ours = own.iter().find(|m| m.build_id.as_ref() == Some(build_id))?;
    let data = std::fs::read(&ours.file).ok()?;
    let our_bias = ours.bias(&TargetElf::parse(&data).ok()?)?;
    let path = std::ffi::CString::new(ours.path.as_str()).ok()?;
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: RTLD_NOLOAD only looks up an already loaded object; dlsym reads
    // its symbol table. Neither runs code of the object.
    let addr = unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY);
        if handle.is_null() {
            return None;
        }
        let addr = libc::dlsym(handle, cname.as_ptr());
        libc::dlclose(handle);
        addr as u64
    };
    if addr == 0 {
        return None;
    }
    let offset = addr.checked_sub(our_bias)?;
    Some(target_exports.bias.wrapping_add(offset))
}

pub struct Resolver<'a> {
    target_symbols: &'a SymbolTable,
    target_bias: u64,
    others: &'a [LoadedModule],
    loaded: HashMap<usize, Option<Exports>>,
    /// The objects our own process maps, read once, for IFUNC resolution.
    own: Option<Vec<LoadedModule>>,
}

impl<'a> Resolver<'a> {
    pub fn new(target_symbols: &'a SymbolTable, target_bias: u64, others: &'a [LoadedModule]) -> Resolver<'a> {
        Resolver { target_symbols, target_bias, others, loaded: HashMap::new(), own: None }
    }

    /// The run-time address of `name`, or why it cannot be had.
    pub fn resolve(&mut self, name: &str) -> Result<u64, String> {
        match self.target_symbols.lookup(name, None) {
            Ok(sym) if sym.kind == SymbolKind::IndirectFunction => {
                return Err(format!("{name} is an indirect function (IFUNC) of the target; call it through a pointer"));
            }
            Ok(sym) => return Ok(self.target_bias.wrapping_add(sym.address)),
            Err(hotpatch_elf::LookupError::NotFound(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        for i in 0..self.others.len() {
            let exports = self.loaded.entry(i).or_insert_with(|| exports_of(&self.others[i]));
            let Some(exports) = exports else { continue };
            if let Some(export) = exports.by_name.get(name).copied() {
                if !export.ifunc {
                    return Ok(export.address);
                }
                let own = self.own.get_or_insert_with(|| {
                    let pid = std::process::id() as i32;
                    crate::procfs::maps(pid).map(|m| crate::modules::loaded_modules(pid, &m)).unwrap_or_default()
                });
                return resolve_ifunc_locally(name, exports, own).ok_or_else(|| {
                    format!(
                        "{name} in {} is an indirect function (IFUNC) that cannot be resolved for this process",
                        self.others[i].path
                    )
                });
            }
        }
        Err(format!("symbol {name} is not defined in the target nor exported by any object the process maps"))
    }
}
