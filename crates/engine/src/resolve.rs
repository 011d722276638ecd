//! Resolving the names a payload references to addresses in the target
//! process: first the target itself (all its symbols, local ones included),
//! then what other loaded objects export (libc and friends), searched in the
//! order the caller gives: the process's lookup scope ([`crate::scope`]).

use crate::inject::Injector;
use crate::modules::LoadedModule;
use crate::procfs::{Mapping, ProcessMemory};
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
/// target's choice of implementation is the one our process made. Says why
/// when it cannot.
fn resolve_ifunc_locally(name: &str, target_exports: &Exports, own: &[LoadedModule]) -> Result<u64, String> {
    let build_id = target_exports.build_id.as_ref().ok_or("the library has no build-id")?;
    let ours = own
        .iter()
        .find(|m| m.build_id.as_ref() == Some(build_id))
        .ok_or_else(|| format!("this process has no copy of the library with build-id {}", hex::encode(build_id)))?;
    let data = std::fs::read(&ours.file).map_err(|e| format!("read our copy {}: {e}", ours.path))?;
    let elf = TargetElf::parse(&data).map_err(|e| format!("our copy {}: {e}", ours.path))?;
    let our_bias = ours.bias(&elf).ok_or_else(|| format!("cannot tell where our copy {} is loaded", ours.path))?;
    let path = std::ffi::CString::new(ours.path.as_str()).map_err(|_| "path with a NUL byte")?;
    let cname = std::ffi::CString::new(name).map_err(|_| "name with a NUL byte")?;
    // SAFETY: RTLD_NOLOAD only looks up an already loaded object; dlsym reads
    // its symbol table (and runs the IFUNC's resolver, in our process, as a
    // call would). dlerror's message is copied before anything else runs.
    let addr = unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY);
        if handle.is_null() {
            let why = libc::dlerror();
            let why = if why.is_null() { "not loaded".into() } else { std::ffi::CStr::from_ptr(why).to_string_lossy() };
            return Err(format!("dlopen of our copy {} failed: {why}", ours.path));
        }
        let addr = libc::dlsym(handle, cname.as_ptr());
        libc::dlclose(handle);
        addr as u64
    };
    let offset = addr.checked_sub(our_bias).filter(|_| addr != 0).ok_or("dlsym found nothing in our copy")?;
    Ok(target_exports.bias.wrapping_add(offset))
}

/// The objects our own process maps, for IFUNC resolution. Read again (a
/// few times) while the wanted build-id is missing: this process may be
/// mapping and unmapping (threads starting) while its maps are read.
fn own_modules(want: Option<&Vec<u8>>) -> Vec<LoadedModule> {
    let pid = std::process::id() as i32;
    let mut modules = Vec::new();
    for _ in 0..3 {
        modules = crate::procfs::maps(pid).map(|m| crate::modules::loaded_modules(pid, &m)).unwrap_or_default();
        if want.is_none_or(|id| modules.iter().any(|m| m.build_id.as_ref() == Some(id))) {
            break;
        }
    }
    modules
}

/// The process an IFUNC resolver can be run in (see [`Resolver::run_resolvers_in`]).
struct InTarget<'a> {
    pid: i32,
    maps: &'a [Mapping],
    mem: &'a ProcessMemory,
}

impl InTarget<'_> {
    /// Runs the resolver at `resolver` in a borrowed thread of the process,
    /// as ld.so would have at load time; the result must be executable code
    /// of the process.
    fn resolve(&self, resolver: u64) -> Result<u64, String> {
        let mut inj = Injector::attach(self.pid, self.maps, self.mem).map_err(|e| e.to_string())?;
        let called = inj.call(resolver);
        let finished = inj.finish();
        let addr = called.map_err(|e| e.to_string())?;
        finished.map_err(|e| e.to_string())?;
        if !self.maps.iter().any(|m| m.exec && m.contains(addr)) {
            return Err(format!("its resolver, run in the process, returned 0x{addr:x}, not executable code"));
        }
        Ok(addr)
    }
}

pub struct Resolver<'a> {
    target_symbols: &'a SymbolTable,
    target_bias: u64,
    others: &'a [LoadedModule],
    loaded: HashMap<usize, Option<Exports>>,
    /// The objects our own process maps, read once, for IFUNC resolution.
    own: Option<Vec<LoadedModule>>,
    /// Names the manifest binds to baseline addresses (link-time), looked up first.
    baseline: HashMap<String, u64>,
    /// Where IFUNC resolvers run when our own process has no copy of the object.
    in_target: Option<InTarget<'a>>,
}

impl<'a> Resolver<'a> {
    pub fn new(target_symbols: &'a SymbolTable, target_bias: u64, others: &'a [LoadedModule]) -> Resolver<'a> {
        Resolver {
            target_symbols,
            target_bias,
            others,
            loaded: HashMap::new(),
            own: None,
            baseline: HashMap::new(),
            in_target: None,
        }
    }

    /// Lets IFUNCs that our own copy of the object cannot answer for (any
    /// object but the ones this process maps too, glibc's) be resolved by
    /// running their resolver in the process, in a borrowed thread.
    pub fn run_resolvers_in(&mut self, pid: i32, maps: &'a [Mapping], mem: &'a ProcessMemory) {
        self.in_target = Some(InTarget { pid, maps, mem });
    }

    /// Binds payload names to link-time addresses in the target, as the
    /// builder proved them; these win over every other lookup.
    pub fn bind_baseline(&mut self, symbols: impl IntoIterator<Item = (String, u64)>) {
        self.baseline.extend(symbols);
    }

    /// The run-time address of `name`, or why it cannot be had.
    pub fn resolve(&mut self, name: &str) -> Result<u64, String> {
        if let Some(address) = self.baseline.get(name) {
            return Ok(self.target_bias.wrapping_add(*address));
        }
        match self.target_symbols.lookup(name, None) {
            Ok(sym) if sym.kind == SymbolKind::IndirectFunction => {
                let resolver = self.target_bias.wrapping_add(sym.address);
                let in_target = self.in_target.as_ref().ok_or("no process to run the resolver in".to_string());
                return in_target.and_then(|t| t.resolve(resolver)).map_err(|why| {
                    format!("{name} is an indirect function (IFUNC) of the target that cannot be resolved: {why}")
                });
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
                let own = self.own.get_or_insert_with(|| own_modules(exports.build_id.as_ref()));
                let locally = resolve_ifunc_locally(name, exports, own);
                let resolved = match (locally, &self.in_target) {
                    (Err(_), Some(target)) => target.resolve(export.address),
                    (locally, _) => locally,
                };
                return resolved.map_err(|why| {
                    format!(
                        "{name} in {} is an indirect function (IFUNC) that cannot be resolved for this process: {why}",
                        self.others[i].path
                    )
                });
            }
        }
        Err(format!("symbol {name} is not defined in the target nor exported by any object the process maps"))
    }
}
