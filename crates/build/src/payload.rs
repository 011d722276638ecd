//! Writing the payload: a relocatable object holding the functions that go
//! into the patch, the read-only data they need (string literals, constants,
//! jump tables) and the data objects the fix adds. Every other reference is
//! bound to the baseline: by address in the manifest when the baseline alone
//! defines it, by name when the dynamic linker would look it up.

use crate::objfile::{ObjectFile, SectionClass, SymKind, pc_relative};
use object::write::{self, Relocation, SectionId, StandardSegment, SymbolId};
use object::{Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags, SymbolScope};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How a reference from the payload reaches something outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// A baseline symbol at this link-time address (manifest `symbols`).
    Address(u64),
    /// Left to the engine's lookup by name (libc, or an export of the baseline).
    ByName,
}

/// Decides, for a symbol the payload refers to but does not hold, where it is.
pub trait Binder {
    /// `obj` defines `sym` (a named function or object) or refers to it undefined.
    fn bind(&mut self, obj: &ObjectFile, sym: usize) -> Result<Binding, String>;
}

/// What goes into the payload from one fixed object.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// Sections copied whole (functions in the patch, their data).
    pub sections: BTreeSet<usize>,
}

pub struct PayloadWriter {
    out: write::Object<'static>,
    copied: HashMap<(usize, usize), SectionId>,
    externs: HashMap<String, SymbolId>,
    /// Payload name → baseline address, for the manifest.
    pub bound: BTreeMap<String, u64>,
}

impl Default for PayloadWriter {
    fn default() -> Self {
        PayloadWriter {
            out: write::Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little),
            copied: HashMap::new(),
            externs: HashMap::new(),
            bound: BTreeMap::new(),
        }
    }
}

/// The payload name of a function or object of object number `index`:
/// unique across the payload even when two files have a static of one name.
pub fn payload_name(index: usize, obj: &ObjectFile, sym: usize) -> String {
    format!("hp{index}.{}", obj.symbols[sym].name)
}

/// The name a baseline symbol is bound under: a file-local one carries its file.
pub fn bound_name(obj: &ObjectFile, sym: usize) -> String {
    let s = &obj.symbols[sym];
    match (&obj.source_file, s.local) {
        (Some(file), true) => format!("{file}:{}", s.name),
        _ => s.name.clone(),
    }
}

impl PayloadWriter {
    /// Copies the selected sections of fixed object `index` and defines
    /// their named functions and objects under payload names.
    pub fn add_sections(&mut self, index: usize, obj: &ObjectFile, selection: &Selection) {
        for &sec in &selection.sections {
            let s = &obj.sections[sec];
            let kind = match s.class {
                SectionClass::Text => SectionKind::Text,
                SectionClass::Writable => SectionKind::Data,
                SectionClass::Bss => SectionKind::UninitializedData,
                _ => SectionKind::ReadOnlyData,
            };
            let segment = self.out.segment_name(StandardSegment::Data).to_vec();
            let id = self.out.add_section(segment, s.name.as_bytes().to_vec(), kind);
            if s.class == SectionClass::Bss {
                self.out.append_section_bss(id, s.size, s.align);
            } else {
                self.out.set_section_data(id, s.data.clone(), s.align);
            }
            self.copied.insert((index, sec), id);
        }
        for (i, sym) in obj.symbols.iter().enumerate() {
            let Some(sec) = sym.section else { continue };
            let Some(&id) = self.copied.get(&(index, sec)) else { continue };
            if !matches!(sym.kind, SymKind::Function | SymKind::Object) {
                continue;
            }
            self.out.add_symbol(write::Symbol {
                name: payload_name(index, obj, i).into_bytes(),
                value: sym.value,
                size: sym.size,
                kind: if sym.kind == SymKind::Function { object::SymbolKind::Text } else { object::SymbolKind::Data },
                scope: SymbolScope::Linkage,
                weak: false,
                section: write::SymbolSection::Section(id),
                flags: SymbolFlags::None,
            });
        }
    }

    /// Writes the relocations of every copied section of object `index`.
    pub fn add_relocations(&mut self, index: usize, obj: &ObjectFile, binder: &mut dyn Binder) -> Result<(), String> {
        let copied: Vec<(usize, SectionId)> =
            self.copied.iter().filter(|((i, _), _)| *i == index).map(|((_, s), id)| (*s, *id)).collect();
        for (sec, id) in copied {
            for r in &obj.sections[sec].relocs {
                let (symbol, addend) = self.target(index, obj, sec, r, binder)?;
                let reloc =
                    Relocation { offset: r.offset, symbol, addend, flags: RelocationFlags::Elf { r_type: r.r_type } };
                self.out.add_relocation(id, reloc).map_err(|e| format!("{}: {e}", obj.sections[sec].name))?;
            }
        }
        Ok(())
    }

    fn target(
        &mut self,
        index: usize,
        obj: &ObjectFile,
        sec: usize,
        r: &crate::objfile::Reloc,
        binder: &mut dyn Binder,
    ) -> Result<(SymbolId, i64), String> {
        let sym = &obj.symbols[r.symbol];
        if let Some(ts) = sym.section
            && let Some(&id) = self.copied.get(&(index, ts))
        {
            let section_symbol = self.out.section_symbol(id);
            return Ok((section_symbol, r.addend.wrapping_add(sym.value as i64)));
        }
        // Outside the payload: name what is referred to.
        let (named, addend) = match sym.section {
            Some(ts) if sym.kind == SymKind::Section || sym.name.is_empty() => {
                let bias = if pc_relative(r.r_type) { 4 } else { 0 };
                let at = (sym.value as i64).wrapping_add(r.addend).wrapping_add(bias);
                let named = u64::try_from(at).ok().and_then(|at| obj.named_at(ts, at)).ok_or_else(|| {
                    format!(
                        "{} refers to {}+{} outside any named object, and that data is not in the patch",
                        obj.sections[sec].name, obj.sections[ts].name, at
                    )
                })?;
                let delta = (sym.value as i64).wrapping_add(r.addend).wrapping_sub(obj.symbols[named].value as i64);
                (named, delta)
            }
            _ => (r.symbol, r.addend),
        };
        let name = match binder.bind(obj, named)? {
            Binding::Address(address) => {
                let name = bound_name(obj, named);
                self.bound.insert(name.clone(), address);
                name
            }
            Binding::ByName => obj.symbols[named].name.clone(),
        };
        Ok((self.external(&name), addend))
    }

    fn external(&mut self, name: &str) -> SymbolId {
        if let Some(id) = self.externs.get(name) {
            return *id;
        }
        let id = self.out.add_symbol(write::Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: object::SymbolKind::Unknown,
            scope: SymbolScope::Linkage,
            weak: false,
            section: write::SymbolSection::Undefined,
            flags: SymbolFlags::None,
        });
        self.externs.insert(name.to_owned(), id);
        id
    }

    pub fn finish(self) -> Result<(Vec<u8>, BTreeMap<String, u64>), String> {
        let bytes = self.out.write().map_err(|e| e.to_string())?;
        Ok((bytes, self.bound))
    }
}
