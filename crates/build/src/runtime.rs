//! What a payload may use beyond replacement code (include/hotpatch.h): the
//! shadow variable runtime, linked into a payload that calls it, and the
//! callbacks the engine runs inside the process, found by name.
//!
//! The runtime goes into the payload (rather than being supplied by the
//! engine) so that every byte of code that runs in the process is signed
//! with the package.

use object::write::{self, SectionId, SymbolId};
use object::{
    Architecture, BinaryFormat, Endianness, Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionFlags,
    SectionIndex, SectionKind, SymbolFlags, SymbolIndex, SymbolSection,
};
use std::collections::HashMap;

/// ELF headers are read in place: the bytes must be aligned as they are.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static RUNTIME: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/shadow.o")));

/// The runtime, compiled from `runtime/shadow.c` by build.rs.
pub fn runtime_object() -> &'static [u8] {
    &RUNTIME.0
}

/// The header a fix includes (`#include <hotpatch.h>`): `hotpatch build`
/// puts it on the compiler's include path of both builds.
pub const HEADER: &str = include_str!("../../../include/hotpatch.h");

/// The functions of the shadow variable API (include/hotpatch.h).
pub const SHADOW_API: [&str; 4] =
    ["hotpatch_shadow_get", "hotpatch_shadow_get_or_alloc", "hotpatch_shadow_free", "hotpatch_shadow_free_all"];

/// The runtime's table root in the payload; the engine finds it by this name.
pub const SHADOW_ROOT: &str = "hotpatch_shadow_root";

/// Callbacks the engine runs inside the process when a payload defines them.
pub const CALLBACKS: [&str; 4] =
    ["hotpatch_pre_apply", "hotpatch_post_apply", "hotpatch_pre_rollback", "hotpatch_post_rollback"];

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("payload: {0}")]
    Parse(String),
    #[error("payload: {0} is defined by the payload and by the shadow variable runtime")]
    Duplicate(String),
    #[error("payload: callback {0} is defined twice")]
    TwoCallbacks(String),
    #[error("payload: section {section}: {why}")]
    Unsupported { section: String, why: String },
    #[error("payload: writing the payload with the runtime failed: {0}")]
    Write(String),
}

/// Whether the payload calls the shadow variable API without defining it.
/// Bytes that are no object are not (the payload check names what they are).
pub fn uses_shadow_api(payload: &[u8]) -> bool {
    let Ok(file) = object::File::parse(payload) else { return false };
    let mut undefined = false;
    for sym in file.symbols() {
        let Ok(name) = sym.name() else { continue };
        if SHADOW_API.contains(&name) || name == SHADOW_ROOT {
            if !sym.is_undefined() {
                return false;
            }
            undefined = true;
        }
    }
    undefined
}

/// Whether the payload holds the shadow variable runtime (its root).
pub fn defines_shadow_root(payload: &[u8]) -> bool {
    let Ok(file) = object::File::parse(payload) else { return false };
    file.symbols().any(|s| s.is_definition() && s.name() == Ok(SHADOW_ROOT))
}

/// The payload with the shadow variable runtime linked in when it calls the
/// API, else unchanged.
pub fn with_runtime(payload: Vec<u8>) -> Result<Vec<u8>, RuntimeError> {
    if !uses_shadow_api(&payload) {
        return Ok(payload);
    }
    merge(&[&payload, runtime_object()])
}

/// The callbacks a payload defines (as global functions); one defined
/// twice (by two files of the fix) is refused: which would run?
pub fn callbacks(payload: &[u8]) -> Result<Vec<&'static str>, RuntimeError> {
    let file = object::File::parse(payload).map_err(|e| RuntimeError::Parse(e.to_string()))?;
    let mut found = Vec::new();
    for sym in file.symbols().filter(|s| s.is_definition() && s.is_global()) {
        let Some(&name) = sym.name().ok().and_then(|n| CALLBACKS.iter().find(|c| **c == n)) else { continue };
        if found.contains(&name) {
            return Err(RuntimeError::TwoCallbacks(name.to_owned()));
        }
        found.push(name);
    }
    // In the order they run.
    found.sort_by_key(|n| CALLBACKS.iter().position(|c| c == n));
    Ok(found)
}

/// One relocatable object out of several, as `ld -r` would make it: every
/// section, symbol and relocation kept; an undefined name bound to the
/// object that defines it.
fn merge(inputs: &[&[u8]]) -> Result<Vec<u8>, RuntimeError> {
    let files = inputs
        .iter()
        .map(|bytes| object::File::parse(*bytes).map_err(|e| RuntimeError::Parse(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = write::Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let mut sections: HashMap<(usize, SectionIndex), SectionId> = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        for section in file.sections() {
            if let Some(id) = copy_section(&mut out, &section)? {
                sections.insert((i, section.index()), id);
            }
        }
    }
    let mut globals: HashMap<String, SymbolId> = HashMap::new();
    let mut symbols: HashMap<(usize, SymbolIndex), SymbolId> = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        for sym in file.symbols().filter(|s| !s.is_undefined()) {
            if let Some(id) = copy_symbol(&mut out, &sections, i, &sym, &mut globals)? {
                symbols.insert((i, sym.index()), id);
            }
        }
    }
    for (i, file) in files.iter().enumerate() {
        for sym in file.symbols().filter(|s| s.is_undefined()) {
            let name = sym.name().unwrap_or_default();
            if name.is_empty() {
                continue;
            }
            let id = *globals.entry(name.to_owned()).or_insert_with(|| {
                out.add_symbol(write::Symbol {
                    name: name.as_bytes().to_vec(),
                    value: 0,
                    size: 0,
                    kind: sym.kind(),
                    scope: object::SymbolScope::Linkage,
                    weak: sym.is_weak(),
                    section: write::SymbolSection::Undefined,
                    flags: SymbolFlags::None,
                })
            });
            symbols.insert((i, sym.index()), id);
        }
    }
    for (i, file) in files.iter().enumerate() {
        for section in file.sections() {
            let Some(&id) = sections.get(&(i, section.index())) else { continue };
            copy_relocations(&mut out, &section, id, i, &sections, &symbols)?;
        }
    }
    out.write().map_err(|e| RuntimeError::Write(e.to_string()))
}

fn copy_section(
    out: &mut write::Object<'static>,
    section: &object::Section<'_, '_>,
) -> Result<Option<SectionId>, RuntimeError> {
    let name = section.name().unwrap_or_default().to_owned();
    let SectionFlags::Elf { sh_flags } = section.flags() else { return Ok(None) };
    let sh_type = match section.kind() {
        SectionKind::UninitializedData => object::elf::SHT_NOBITS,
        SectionKind::Note => object::elf::SHT_NOTE,
        SectionKind::Metadata | SectionKind::Linker => return Ok(None),
        SectionKind::Elf(t) if t == object::elf::SHT_GROUP => {
            return Err(RuntimeError::Unsupported { section: name, why: "COMDAT groups are not supported".into() });
        }
        SectionKind::Elf(t) => t,
        SectionKind::Tls | SectionKind::UninitializedTls => {
            return Err(RuntimeError::Unsupported {
                section: name,
                why: "a payload may not define thread-local variables".into(),
            });
        }
        _ => object::elf::SHT_PROGBITS,
    };
    if sh_type == object::elf::SHT_NULL || name.is_empty() {
        return Ok(None);
    }
    let kind =
        if sh_type == object::elf::SHT_NOBITS { SectionKind::UninitializedData } else { SectionKind::Elf(sh_type) };
    let id = out.add_section(Vec::new(), name.clone().into_bytes(), kind);
    let align = section.align().max(1);
    if sh_type == object::elf::SHT_NOBITS {
        out.append_section_bss(id, section.size(), align);
    } else {
        let data = section.data().map_err(|e| RuntimeError::Unsupported { section: name, why: e.to_string() })?;
        out.set_section_data(id, data.to_vec(), align);
    }
    out.section_mut(id).flags = SectionFlags::Elf { sh_flags };
    Ok(Some(id))
}

fn copy_symbol(
    out: &mut write::Object<'static>,
    sections: &HashMap<(usize, SectionIndex), SectionId>,
    input: usize,
    sym: &object::Symbol<'_, '_>,
    globals: &mut HashMap<String, SymbolId>,
) -> Result<Option<SymbolId>, RuntimeError> {
    let name = sym.name().unwrap_or_default().to_owned();
    let section = match sym.section() {
        SymbolSection::Section(index) => match sections.get(&(input, index)) {
            Some(&id) => write::SymbolSection::Section(id),
            None => return Ok(None),
        },
        SymbolSection::Absolute => write::SymbolSection::Absolute,
        SymbolSection::Common => {
            return Err(RuntimeError::Unsupported {
                section: "COMMON".into(),
                why: format!("{name} is a common symbol: compile with -fno-common"),
            });
        }
        _ => return Ok(None),
    };
    if sym.kind() == object::SymbolKind::Section {
        let write::SymbolSection::Section(id) = section else { return Ok(None) };
        return Ok(Some(out.section_symbol(id)));
    }
    if sym.kind() == object::SymbolKind::File {
        return Ok(None);
    }
    let global = sym.is_global() || sym.is_weak();
    if global && globals.contains_key(&name) {
        return Err(RuntimeError::Duplicate(name));
    }
    let flags = match sym.flags() {
        SymbolFlags::Elf { st_info, st_other } => SymbolFlags::Elf { st_info, st_other },
        _ => SymbolFlags::None,
    };
    let id = out.add_symbol(write::Symbol {
        name: name.clone().into_bytes(),
        value: sym.address(),
        size: sym.size(),
        kind: sym.kind(),
        scope: sym.scope(),
        weak: sym.is_weak(),
        section,
        flags,
    });
    if global {
        globals.insert(name, id);
    }
    Ok(Some(id))
}

fn copy_relocations(
    out: &mut write::Object<'static>,
    section: &object::Section<'_, '_>,
    id: SectionId,
    input: usize,
    sections: &HashMap<(usize, SectionIndex), SectionId>,
    symbols: &HashMap<(usize, SymbolIndex), SymbolId>,
) -> Result<(), RuntimeError> {
    let name = || section.name().unwrap_or_default().to_owned();
    for (offset, reloc) in section.relocations() {
        let symbol = match reloc.target() {
            RelocationTarget::Symbol(index) => symbols.get(&(input, index)).copied(),
            RelocationTarget::Section(index) => sections.get(&(input, index)).map(|&s| out.section_symbol(s)),
            _ => None,
        }
        .ok_or_else(|| RuntimeError::Unsupported {
            section: name(),
            why: format!("a relocation at 0x{offset:x} refers to something not copied"),
        })?;
        let relocation = write::Relocation { offset, symbol, addend: reloc.addend(), flags: reloc.flags() };
        out.add_relocation(id, relocation)
            .map_err(|e| RuntimeError::Unsupported { section: name(), why: e.to_string() })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_defines_the_api_and_needs_nothing() {
        let file = object::File::parse(runtime_object()).unwrap();
        let defined: std::collections::BTreeSet<&str> =
            file.symbols().filter(|s| s.is_definition()).filter_map(|s| s.name().ok()).collect();
        for name in SHADOW_API.iter().chain([&SHADOW_ROOT]) {
            assert!(defined.contains(name), "{name} missing");
        }
        let undefined: Vec<&str> = file
            .symbols()
            .filter(|s| s.is_undefined())
            .filter_map(|s| s.name().ok())
            .filter(|n| !n.is_empty())
            .collect();
        assert!(undefined.is_empty(), "the runtime calls {undefined:?}");
    }

    #[test]
    fn a_name_defined_twice_is_refused() {
        let twice = merge(&[runtime_object(), runtime_object()]);
        assert!(matches!(twice, Err(RuntimeError::Duplicate(name)) if name.starts_with("hotpatch_shadow_")));
    }

    #[test]
    fn a_payload_without_the_api_is_left_as_it_is() {
        let payload = runtime_object().to_vec();
        assert!(!uses_shadow_api(&payload));
        assert_eq!(with_runtime(payload.clone()).unwrap(), payload);
        assert_eq!(with_runtime(b"not elf".to_vec()).unwrap(), b"not elf");
        assert!(defines_shadow_root(&payload) && !defines_shadow_root(b"not elf"));
    }
}
