//! Writing the payload: a relocatable object holding the functions that go
//! into the patch, the read-only data they need (string literals, constants,
//! jump tables) and the data objects the fix adds. Every other reference is
//! bound to the baseline: by address in the manifest when the baseline alone
//! defines it, by name when the dynamic linker would look it up.

use crate::objfile::{ObjectFile, SectionClass, SymKind};
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
    /// Sections copied whole (functions in the patch, read-only data).
    pub sections: BTreeSet<usize>,
    /// Data objects (symbol indices) copied alone: state the fix adds, which
    /// may share a section with the baseline's own variables.
    pub objects: BTreeSet<usize>,
}

pub struct PayloadWriter {
    out: write::Object<'static>,
    copied: HashMap<(usize, usize), SectionId>,
    /// (object, symbol) → the payload section holding that data object alone.
    copied_objects: HashMap<(usize, usize), SectionId>,
    externs: HashMap<String, SymbolId>,
    /// Global name → (payload section, offset) of a function or object
    /// defined by a source file the fix adds: other files' references of
    /// that name reach it in the payload.
    added_globals: HashMap<String, (SectionId, u64)>,
    /// The payload's `.eh_frame`: the copied functions' records, and their
    /// relocations (offset, symbol, addend, type).
    unwind: Vec<u8>,
    unwind_relocs: Vec<(u64, SymbolId, i64, u32)>,
    /// Payload name → baseline address, for the manifest.
    pub bound: BTreeMap<String, u64>,
}

impl Default for PayloadWriter {
    fn default() -> Self {
        PayloadWriter {
            out: write::Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little),
            copied: HashMap::new(),
            copied_objects: HashMap::new(),
            externs: HashMap::new(),
            added_globals: HashMap::new(),
            unwind: Vec::new(),
            unwind_relocs: Vec::new(),
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
        for &sym in &selection.objects {
            self.add_object(index, obj, sym);
        }
        for (i, sym) in obj.symbols.iter().enumerate() {
            let Some(sec) = sym.section else { continue };
            let Some(&id) = self.copied.get(&(index, sec)) else { continue };
            if !matches!(sym.kind, SymKind::Function | SymKind::Object) {
                continue;
            }
            self.define(payload_name(index, obj, i), id, sym.value, sym.size, sym.kind == SymKind::Function);
            if sym.kind == SymKind::Function && !sym.local && crate::runtime::CALLBACKS.contains(&sym.name.as_str()) {
                // The engine finds a callback by its own name.
                self.define(sym.name.clone(), id, sym.value, sym.size, true);
            }
        }
    }

    /// Makes the global functions and objects of object `index` (a file the
    /// fix adds, whose sections are already added) the ones other objects'
    /// references of those names reach.
    pub fn expose_globals(&mut self, index: usize, obj: &ObjectFile) {
        for (i, sym) in obj.symbols.iter().enumerate() {
            if sym.local || !matches!(sym.kind, SymKind::Function | SymKind::Object) {
                continue;
            }
            let whole = sym.section.and_then(|sec| self.copied.get(&(index, sec))).map(|&id| (id, sym.value));
            let alone = self.copied_objects.get(&(index, i)).map(|&id| (id, 0));
            if let Some(at) = alone.or(whole) {
                self.added_globals.insert(sym.name.clone(), at);
            }
        }
    }

    fn define(&mut self, name: String, section: SectionId, value: u64, size: u64, function: bool) {
        self.out.add_symbol(write::Symbol {
            name: name.into_bytes(),
            value,
            size,
            kind: if function { object::SymbolKind::Text } else { object::SymbolKind::Data },
            scope: SymbolScope::Linkage,
            weak: false,
            section: write::SymbolSection::Section(section),
            flags: SymbolFlags::None,
        });
    }

    /// A new data object in a section of its own (offset 0 is its start).
    fn add_object(&mut self, index: usize, obj: &ObjectFile, sym: usize) {
        let s = &obj.symbols[sym];
        let Some(sec) = s.section else { return };
        let section = &obj.sections[sec];
        let segment = self.out.segment_name(StandardSegment::Data).to_vec();
        let bss = section.class == SectionClass::Bss;
        let (prefix, kind) = if bss { (".bss", SectionKind::UninitializedData) } else { (".data", SectionKind::Data) };
        let id = self.out.add_section(segment, format!("{prefix}.{}", s.name).into_bytes(), kind);
        let align = section.align.min(64);
        if bss {
            self.out.append_section_bss(id, s.size.max(1), align);
        } else {
            let bytes = section.data.get(s.value as usize..(s.value + s.size) as usize).unwrap_or(&[]).to_vec();
            self.out.set_section_data(id, bytes, align);
        }
        self.copied_objects.insert((index, sym), id);
        self.define(payload_name(index, obj, sym), id, 0, s.size, false);
    }

    /// Writes the relocations of every copied section and object of object `index`.
    pub fn add_relocations(&mut self, index: usize, obj: &ObjectFile, binder: &mut dyn Binder) -> Result<(), String> {
        let mut copied: Vec<(usize, SectionId, u64, u64)> =
            self.copied.iter().filter(|((i, _), _)| *i == index).map(|((_, s), id)| (*s, *id, 0, u64::MAX)).collect();
        copied.extend(self.copied_objects.iter().filter(|((i, _), _)| *i == index).filter_map(|((_, sym), id)| {
            let s = &obj.symbols[*sym];
            Some((s.section?, *id, s.value, s.value + s.size))
        }));
        for (sec, id, start, end) in copied {
            for r in obj.sections[sec].relocs.iter().filter(|r| r.offset >= start && r.offset < end) {
                let (symbol, addend) = self.target(index, obj, sec, r, binder)?;
                let flags = RelocationFlags::Elf { r_type: r.r_type };
                let reloc = Relocation { offset: r.offset - start, symbol, addend, flags };
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
        if sym.section.is_none()
            && !sym.local
            && let Some(reached) = self.added_target(&sym.name, r.addend)
        {
            return Ok(reached);
        }
        let (named, addend) = self.named_target(obj, sec, r)?;
        if let Some(&id) = self.copied_objects.get(&(index, named)) {
            return Ok((self.out.section_symbol(id), addend));
        }
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

    /// Appends the unwind records of the functions copied from object
    /// `index`. Where one of their references cannot be bound, the object's
    /// functions go without (the engine then scans a stack inside them
    /// conservatively): unwind data never fails a build.
    pub fn add_unwind(&mut self, index: usize, obj: &ObjectFile, binder: &mut dyn Binder) {
        let Some(sec) = obj.sections.iter().position(|s| s.class == SectionClass::Unwind) else { return };
        let section = &obj.sections[sec];
        let copied_code = |r: &crate::objfile::Reloc| {
            obj.symbols[r.symbol].section.is_some_and(|ts| {
                obj.sections[ts].class == SectionClass::Text && self.copied.contains_key(&(index, ts))
            })
        };
        let Some(table) = crate::unwind::cut(&section.data, &section.relocs, copied_code) else {
            tracing::debug!(object = %obj.path, "its .eh_frame is not one the builder can cut: no unwind records");
            return;
        };
        let mut relocs = Vec::new();
        for (offset, r) in &table.relocs {
            match self.target(index, obj, sec, r, binder) {
                Ok((symbol, addend)) => relocs.push((*offset, symbol, addend, r.r_type)),
                Err(why) => {
                    tracing::debug!(object = %obj.path, %why, "unwind records left out");
                    return;
                }
            }
        }
        let base = self.unwind.len() as u64;
        self.unwind.extend_from_slice(&table.bytes);
        self.unwind_relocs.extend(relocs.into_iter().map(|(o, sym, a, t)| (base + o, sym, a, t)));
    }

    /// Where a reference by name to a function or object of an added file is.
    fn added_target(&mut self, name: &str, addend: i64) -> Option<(SymbolId, i64)> {
        let &(id, offset) = self.added_globals.get(name)?;
        Some((self.out.section_symbol(id), addend.wrapping_add(offset as i64)))
    }

    /// The named function or object a relocation reaches, and the addend
    /// relative to it (gas turns references to file-local objects into
    /// references to their section).
    fn named_target(&self, obj: &ObjectFile, sec: usize, r: &crate::objfile::Reloc) -> Result<(usize, i64), String> {
        let sym = &obj.symbols[r.symbol];
        match sym.section {
            Some(ts) if sym.is_label() && obj.sections[ts].class == SectionClass::Text => {
                let f = obj.owner_function(ts).ok_or_else(|| {
                    format!("{} refers to {}, which holds no function", obj.sections[sec].name, obj.sections[ts].name)
                })?;
                Ok((f, (sym.value as i64).wrapping_add(r.addend).wrapping_sub(obj.symbols[f].value as i64)))
            }
            Some(ts) if sym.is_label() => {
                let at = (sym.value as i64).wrapping_add(r.addend).wrapping_add(r.bias());
                let named = u64::try_from(at).ok().and_then(|at| obj.named_at(ts, at)).ok_or_else(|| {
                    format!(
                        "{} refers to {}+{} outside any named object, and that data is not in the patch",
                        obj.sections[sec].name, obj.sections[ts].name, at
                    )
                })?;
                let delta = (sym.value as i64).wrapping_add(r.addend).wrapping_sub(obj.symbols[named].value as i64);
                Ok((named, delta))
            }
            _ => Ok((r.symbol, r.addend)),
        }
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

    pub fn finish(mut self) -> Result<(Vec<u8>, BTreeMap<String, u64>), String> {
        if !self.unwind.is_empty() {
            let segment = self.out.segment_name(StandardSegment::Data).to_vec();
            let id = self.out.add_section(segment, b".eh_frame".to_vec(), SectionKind::ReadOnlyData);
            self.out.set_section_data(id, std::mem::take(&mut self.unwind), 8);
            for (offset, symbol, addend, r_type) in std::mem::take(&mut self.unwind_relocs) {
                let flags = RelocationFlags::Elf { r_type };
                self.out.add_relocation(id, Relocation { offset, symbol, addend, flags }).map_err(|e| e.to_string())?;
            }
        }
        let bytes = self.out.write().map_err(|e| e.to_string())?;
        Ok((bytes, self.bound))
    }
}
