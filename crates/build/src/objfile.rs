//! One relocatable object (`ET_REL`) of a build, read into what the differ
//! needs: sections with their relocations, and the named functions and data
//! objects defined in them.
//!
//! References are described by *what* they refer to ([`RefKey`]), never by
//! symbol index or section offset, so that code which only moved compares
//! equal and a changed string literal shows as a changed reference.

use object::read::elf::{ElfFile64, FileHeader, SectionHeader, Sym};
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SymbolSection};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{path}: not a readable ELF object: {why}")]
    Parse { path: String, why: String },
    #[error("{path}: not a relocatable x86_64 ELF object")]
    NotRelocatable { path: String },
    #[error(
        "{path}: is an LTO object (section {section}); link-time optimisation moves code between files, so the \
         differ cannot tell what changed — build without -flto"
    )]
    Lto { path: String, section: String },
    #[error(
        "{path}: section {section} holds {count} functions ({names}); compile with -ffunction-sections \
         (the builder's compiler wrapper adds it) so each function can be compared and moved alone"
    )]
    NotFunctionSections { path: String, section: String, count: usize, names: String },
}

/// Larger alignments than a page are refused (the payload linker places
/// sections within pages).
const MAX_ALIGN: u64 = 4096;

/// No section of a compiled object comes near this (1 TiB).
const MAX_SECTION_SIZE: u64 = 1 << 40;

/// What a section holds, as far as the differ cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionClass {
    Text,
    /// Read-only data that is not merged by the linker.
    ReadOnly,
    /// `SHF_MERGE | SHF_STRINGS`: NUL-terminated strings the linker may merge
    /// and reorder, so only their contents identify them.
    Strings,
    /// `SHF_MERGE` constants of a fixed size (`.rodata.cst16`).
    Constants {
        entry: u64,
    },
    Writable,
    Bss,
    /// `.init_array`, `.ctors` and the like: run only at start.
    Constructors,
    Tls,
    /// `.eh_frame`: the functions' unwind tables (read only to copy the
    /// chosen functions' records into the payload).
    Unwind,
    /// Everything else (notes, debug info, `.comment`, ...).
    Other,
}

#[derive(Debug, Clone)]
pub struct Reloc {
    pub offset: u64,
    pub r_type: u32,
    /// Index into [`ObjectFile::symbols`].
    pub symbol: usize,
    pub addend: i64,
    /// In code: bytes of the instruction after the field (an immediate
    /// operand: `addl $1, x(%rip)` has 1, `movl $0, x(%rip)` 4). A
    /// PC-relative field counts from the instruction's end, so its addend
    /// is -4 minus these.
    pub tail: u8,
}

impl Reloc {
    /// What the addend must be added to for the place the field means:
    /// the instruction's end for a PC-relative field, nothing otherwise.
    pub fn bias(&self) -> i64 {
        if pc_relative(self.r_type) { 4 + i64::from(self.tail) } else { 0 }
    }
}

#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub class: SectionClass,
    pub data: Vec<u8>,
    pub size: u64,
    pub align: u64,
    pub relocs: Vec<Reloc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymKind {
    Function,
    Object,
    Section,
    Other,
}

#[derive(Debug, Clone)]
pub struct ObjSymbol {
    pub name: String,
    pub kind: SymKind,
    pub local: bool,
    /// Defining section, `None` when undefined (or absolute / common).
    pub section: Option<usize>,
    pub value: u64,
    pub size: u64,
}

impl ObjSymbol {
    /// A place in a section rather than a program symbol: a section symbol,
    /// or an assembler label such as `.LC0` (gas keeps those for references
    /// into mergeable sections).
    pub fn is_label(&self) -> bool {
        self.section.is_some()
            && (self.kind == SymKind::Section || self.name.is_empty() || (self.kind == SymKind::Other && self.local))
    }
}

/// A relocatable object of one build.
#[derive(Debug, Clone)]
pub struct ObjectFile {
    /// Path relative to the build tree; pairs an old object with its new one.
    pub path: String,
    /// The `STT_FILE` name: what a linked file's symbol table groups its
    /// file-local symbols under.
    pub source_file: Option<String>,
    /// The `.comment` strings (compiler identification).
    pub compilers: Vec<String>,
    pub sections: Vec<Section>,
    pub symbols: Vec<ObjSymbol>,
    /// ABI signature of each function the DWARF describes (`signature`);
    /// empty without `-g`, or until [`ObjectFile::with_signatures`].
    pub signatures: std::collections::BTreeMap<String, String>,
}

/// What a reference refers to, independent of layout.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefKey {
    /// A named function or data object, with the offset from its start
    /// (for a PC-relative field, the usual -4 is part of it).
    Named { name: String, local: bool, offset: i64 },
    /// A string of a merged string section, and the offset into it.
    String { content: Vec<u8>, offset: i64 },
    /// A constant of a merged constant section.
    Constant { content: Vec<u8>, offset: i64 },
    /// Anonymous data (a jump table, an unnamed `.rodata` blob), known by
    /// its contents, not by where in the section it is: the run of
    /// back-to-back relocations that starts there (a jump table's entries)
    /// with the bytes they cover, or else the next bytes of the section.
    Anonymous { section: String, content: Vec<u8>, refs: Vec<(u64, u32, RefKey)> },
}

impl RefKey {
    pub fn name(&self) -> Option<&str> {
        match self {
            RefKey::Named { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Relocation types whose field is relative to the place (`S + A - P`).
pub fn pc_relative(r_type: u32) -> bool {
    use object::elf::*;
    matches!(
        r_type,
        R_X86_64_PC32
            | R_X86_64_PLT32
            | R_X86_64_PC64
            | R_X86_64_GOTPCREL
            | R_X86_64_GOTPCRELX
            | R_X86_64_REX_GOTPCRELX
            | R_X86_64_TLSGD
            | R_X86_64_TLSLD
            | R_X86_64_GOTTPOFF
    )
}

/// Sets each code relocation's [`Reloc::tail`] by decoding the section's
/// instructions from its start (one function per section). A field the
/// decoder does not place inside an instruction keeps 0.
fn instruction_tails(code: &[u8], relocs: &mut [Reloc]) {
    use iced_x86::{Decoder, DecoderOptions, Instruction};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    let mut next = 0;
    while decoder.can_decode() && next < relocs.len() {
        decoder.decode_out(&mut insn);
        let (start, end) = (insn.ip(), insn.next_ip());
        while next < relocs.len() && relocs[next].offset < start {
            next += 1;
        }
        while next < relocs.len() && relocs[next].offset < end {
            let r = &mut relocs[next];
            let field_end = r.offset + field_width(r.r_type).unwrap_or(4) as u64;
            r.tail = u8::try_from(end.saturating_sub(field_end)).unwrap_or(0);
            next += 1;
        }
    }
}

/// Width in bytes of a relocation's field, `None` for a type the builder does not know.
pub fn field_width(r_type: u32) -> Option<usize> {
    use object::elf::*;
    match r_type {
        R_X86_64_64 | R_X86_64_PC64 | R_X86_64_DTPOFF64 | R_X86_64_TPOFF64 => Some(8),
        R_X86_64_PC32
        | R_X86_64_PLT32
        | R_X86_64_32
        | R_X86_64_32S
        | R_X86_64_GOTPCREL
        | R_X86_64_GOTPCRELX
        | R_X86_64_REX_GOTPCRELX
        | R_X86_64_TLSGD
        | R_X86_64_TLSLD
        | R_X86_64_DTPOFF32
        | R_X86_64_GOTTPOFF
        | R_X86_64_TPOFF32 => Some(4),
        R_X86_64_NONE => Some(0),
        _ => None,
    }
}

pub fn is_tls(r_type: u32) -> bool {
    use object::elf::*;
    matches!(
        r_type,
        R_X86_64_TLSGD
            | R_X86_64_TLSLD
            | R_X86_64_DTPOFF32
            | R_X86_64_DTPOFF64
            | R_X86_64_GOTTPOFF
            | R_X86_64_TPOFF32
            | R_X86_64_TPOFF64
    )
}

fn classify(name: &str, kind: object::SectionKind, sh_flags: u64, entsize: u64) -> SectionClass {
    use object::elf::{SHF_ALLOC, SHF_EXECINSTR, SHF_MERGE, SHF_STRINGS, SHF_TLS, SHF_WRITE};
    let flags = sh_flags as u32;
    if name == ".eh_frame" && flags & SHF_ALLOC != 0 {
        return SectionClass::Unwind;
    }
    if flags & SHF_ALLOC == 0 || name.starts_with(".note") {
        return SectionClass::Other;
    }
    if flags & SHF_TLS != 0 {
        return SectionClass::Tls;
    }
    if [".init_array", ".fini_array", ".ctors", ".dtors", ".preinit_array"].iter().any(|p| name.starts_with(p)) {
        return SectionClass::Constructors;
    }
    if flags & SHF_EXECINSTR != 0 {
        return SectionClass::Text;
    }
    if kind == object::SectionKind::UninitializedData {
        return SectionClass::Bss;
    }
    if flags & SHF_WRITE != 0 && !name.starts_with(".data.rel.ro") {
        return SectionClass::Writable;
    }
    if flags & SHF_MERGE != 0 && flags & SHF_STRINGS != 0 {
        return SectionClass::Strings;
    }
    if flags & SHF_MERGE != 0 && entsize > 0 {
        return SectionClass::Constants { entry: entsize };
    }
    SectionClass::ReadOnly
}

impl ObjectFile {
    /// Reads an object; `path` is its name relative to the build tree.
    pub fn parse(path: &str, data: &[u8]) -> Result<ObjectFile, ObjectError> {
        let bad = |why: String| ObjectError::Parse { path: path.to_owned(), why };
        let file = ElfFile64::<object::Endianness>::parse(data).map_err(|e| bad(e.to_string()))?;
        let endian = file.endian();
        if file.elf_header().e_type(endian) != object::elf::ET_REL
            || file.elf_header().e_machine(endian) != object::elf::EM_X86_64
        {
            return Err(ObjectError::NotRelocatable { path: path.to_owned() });
        }
        let mut sections = Vec::new();
        let mut index_of = BTreeMap::new();
        let mut compilers = Vec::new();
        for section in file.sections() {
            let name = section.name().unwrap_or("").to_owned();
            if name.starts_with(".gnu.lto_") || name.starts_with(".llvm.lto") || name == ".llvmbc" {
                return Err(ObjectError::Lto { path: path.to_owned(), section: name });
            }
            let header = section.elf_section_header();
            let sh_flags = header.sh_flags(endian);
            let class = classify(&name, section.kind(), sh_flags, header.sh_entsize(endian));
            if name == ".comment" {
                let bytes = section.data().unwrap_or(&[]);
                compilers.extend(
                    bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()),
                );
            }
            let data = match class {
                SectionClass::Bss | SectionClass::Other => Vec::new(),
                _ => section.data().map_err(|e| bad(format!("section {name}: {e}")))?.to_vec(),
            };
            let align = section.align().max(1);
            if !align.is_power_of_two() || align > MAX_ALIGN {
                return Err(bad(format!("section {name}: alignment {align} is not a power of two up to {MAX_ALIGN}")));
            }
            index_of.insert(section.index().0, sections.len());
            sections.push(Section { name, class, data, size: section.size(), align, relocs: Vec::new() });
        }
        let (symbols, source_file, sym_index) = read_symbols(&file, &index_of);
        for section in file.sections() {
            let Some(&ours) = index_of.get(&section.index().0) else { continue };
            if sections[ours].class == SectionClass::Other {
                continue;
            }
            for (offset, reloc) in section.relocations() {
                let RelocationFlags::Elf { r_type } = reloc.flags() else { continue };
                let RelocationTarget::Symbol(idx) = reloc.target() else {
                    return Err(bad(format!("section {}: relocation without a symbol", sections[ours].name)));
                };
                let Some(&symbol) = sym_index.get(&idx.0) else {
                    return Err(bad(format!("section {}: relocation to unknown symbol", sections[ours].name)));
                };
                sections[ours].relocs.push(Reloc { offset, r_type, symbol, addend: reloc.addend(), tail: 0 });
            }
            sections[ours].relocs.sort_by_key(|r| r.offset);
            if sections[ours].class == SectionClass::Text {
                let Section { data, relocs, .. } = &mut sections[ours];
                instruction_tails(data, relocs);
            }
        }
        let signatures = Default::default();
        let obj = ObjectFile { path: path.to_owned(), source_file, compilers, sections, symbols, signatures };
        obj.check_bounds().map_err(bad)?;
        obj.check_function_sections()?;
        Ok(obj)
    }

    /// Reads the functions' signatures from `data` (this object's bytes):
    /// only objects the fix changed need them.
    pub fn with_signatures(mut self, data: &[u8]) -> ObjectFile {
        self.signatures = crate::signature::signatures(data);
        self
    }

    /// Every symbol and relocation inside its section, so that no offset
    /// arithmetic later can leave it (or overflow).
    fn check_bounds(&self) -> Result<(), String> {
        for section in &self.sections {
            if section.size > MAX_SECTION_SIZE {
                return Err(format!("section {} is {} bytes", section.name, section.size));
            }
            if let Some(r) = section.relocs.iter().find(|r| r.offset >= section.size) {
                return Err(format!("section {}: relocation at 0x{:x} past its end", section.name, r.offset));
            }
        }
        for sym in &self.symbols {
            let Some(sec) = sym.section else { continue };
            let size = self.sections[sec].size;
            if sym.value > size || sym.size > size - sym.value {
                return Err(format!("symbol {} lies outside its section {}", sym.name, self.sections[sec].name));
            }
        }
        Ok(())
    }

    /// Functions of one text section cannot be told apart once assembled:
    /// calls between them carry no relocation.
    fn check_function_sections(&self) -> Result<(), ObjectError> {
        for (i, section) in self.sections.iter().enumerate() {
            if section.class != SectionClass::Text {
                continue;
            }
            let names: Vec<&str> = self
                .symbols
                .iter()
                .filter(|s| s.kind == SymKind::Function && s.section == Some(i))
                .map(|s| s.name.as_str())
                .collect();
            if names.len() > 1 {
                return Err(ObjectError::NotFunctionSections {
                    path: self.path.clone(),
                    section: section.name.clone(),
                    count: names.len(),
                    names: names.iter().take(4).copied().collect::<Vec<_>>().join(", "),
                });
            }
        }
        Ok(())
    }

    /// Index of the named function or data object starting at `offset` of
    /// `section` (or covering it).
    pub fn named_at(&self, section: usize, offset: u64) -> Option<usize> {
        let mut covering = None;
        for (i, s) in self.symbols.iter().enumerate() {
            if s.section != Some(section) || !matches!(s.kind, SymKind::Function | SymKind::Object) {
                continue;
            }
            if s.value == offset {
                return Some(i);
            }
            if s.value < offset && offset < s.value + s.size.max(1) {
                covering = Some(i);
            }
        }
        covering
    }

    /// The function a text section holds (with -ffunction-sections, one).
    pub fn owner_function(&self, section: usize) -> Option<usize> {
        let mut functions =
            self.symbols.iter().enumerate().filter(|(_, s)| s.section == Some(section) && s.kind == SymKind::Function);
        functions.find(|(_, s)| s.value == 0).or_else(|| functions.next()).map(|(i, _)| i)
    }

    /// Functions defined here: (symbol index, section index).
    pub fn functions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.symbols.iter().enumerate().filter_map(|(i, s)| match (s.kind, s.section) {
            (SymKind::Function, Some(sec)) if self.sections[sec].class == SectionClass::Text => Some((i, sec)),
            _ => None,
        })
    }

    /// Data objects defined here: (symbol index, section index).
    pub fn data_objects(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.symbols.iter().enumerate().filter_map(|(i, s)| match (s.kind, s.section) {
            (SymKind::Object, Some(sec)) => Some((i, sec)),
            _ => None,
        })
    }

    /// The defined function or object named `name` (locals of this file included).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.symbols.iter().position(|s| {
            s.name == name && s.section.is_some() && matches!(s.kind, SymKind::Function | SymKind::Object)
        })
    }

    /// What relocation `r` of section `section` refers to.
    pub fn key(&self, r: &Reloc) -> RefKey {
        let sym = &self.symbols[r.symbol];
        let Some(target) = sym.section.filter(|_| sym.is_label()) else {
            return self.named_key(r.symbol, r.addend);
        };
        // A section symbol (as gas makes of references to local labels and
        // file-local objects): find what lives there.
        let bias = r.bias();
        let at = (sym.value as i64).wrapping_add(r.addend).wrapping_add(bias);
        let sec = &self.sections[target];
        match sec.class {
            SectionClass::Strings => {
                let (content, offset) = string_at(&sec.data, at);
                return RefKey::String { content, offset: offset - bias };
            }
            SectionClass::Constants { entry } => {
                let (content, offset) = constant_at(&sec.data, at, entry);
                return RefKey::Constant { content, offset: offset - bias };
            }
            // One function per text section: the place is in it (a jump
            // table entry's addend is not a plain offset, so no search).
            SectionClass::Text => {
                if let Some(f) = self.owner_function(target) {
                    let offset = (sym.value as i64).wrapping_add(r.addend).wrapping_sub(self.symbols[f].value as i64);
                    return RefKey::Named { name: self.symbols[f].name.clone(), local: self.symbols[f].local, offset };
                }
            }
            _ => {}
        }
        match u64::try_from(at).ok().and_then(|at| self.named_at(target, at)) {
            Some(named) => {
                let offset = (sym.value as i64).wrapping_add(r.addend).wrapping_sub(self.symbols[named].value as i64);
                self.named_key(named, offset)
            }
            // Where the field points (a PC-relative field's -4 undone).
            None => self.anonymous_key(target, at),
        }
    }
}

/// How many bytes of anonymous data without relocations stand for it.
const ANONYMOUS_BYTES: usize = 64;

impl ObjectFile {
    fn anonymous_key(&self, section: usize, offset: i64) -> RefKey {
        let sec = &self.sections[section];
        let start = u64::try_from(offset).unwrap_or(0);
        let mut end = start;
        let mut refs = Vec::new();
        let mut first_target = None;
        for r in sec.relocs.iter().filter(|r| r.offset >= start) {
            // The run ends where the entries stop being back to back, or
            // start naming another section (the next function's table).
            let target = self.symbols[r.symbol].section;
            if r.offset != end || *first_target.get_or_insert(target) != target {
                break;
            }
            // A jump table's entries name places in the function it belongs to.
            let key = match &self.symbols[r.symbol] {
                s if s.is_label() => {
                    let target = s.section.unwrap_or(section);
                    let at = (s.value as i64).wrapping_add(r.addend);
                    match u64::try_from(at).ok().and_then(|a| self.named_at(target, a)) {
                        Some(n) => RefKey::Named {
                            name: self.symbols[n].name.clone(),
                            local: self.symbols[n].local,
                            offset: at - self.symbols[n].value as i64,
                        },
                        None => RefKey::Named { name: self.sections[target].name.clone(), local: true, offset: at },
                    }
                }
                s => RefKey::Named { name: s.name.clone(), local: s.local, offset: r.addend },
            };
            refs.push((r.offset - start, r.r_type, key));
            end = r.offset + field_width(r.r_type).unwrap_or(4) as u64;
        }
        if refs.is_empty() {
            end = start + ANONYMOUS_BYTES as u64;
        }
        let data_end = (end as usize).min(sec.data.len());
        let content = sec.data.get(start as usize..data_end).unwrap_or(&[]).to_vec();
        RefKey::Anonymous { section: sec.name.clone(), content, refs }
    }

    /// The key of a reference to symbol `sym`. A file-local constant object
    /// without relocations (`__func__`, `__PRETTY_FUNCTION__.3`, a static
    /// const table) is known by its contents: gcc numbers such names per
    /// file, so one added above renumbers all the others.
    fn named_key(&self, sym: usize, offset: i64) -> RefKey {
        let s = &self.symbols[sym];
        if let Some(sec) = s.section
            && s.local
            && s.kind == SymKind::Object
            && matches!(
                self.sections[sec].class,
                SectionClass::ReadOnly | SectionClass::Strings | SectionClass::Constants { .. }
            )
            && !self.sections[sec].relocs.iter().any(|r| r.offset >= s.value && r.offset < s.value + s.size)
            && let Some(content) = self.sections[sec].data.get(s.value as usize..(s.value + s.size) as usize)
        {
            return RefKey::Constant { content: content.to_vec(), offset };
        }
        RefKey::Named { name: s.name.clone(), local: s.local, offset }
    }
}

/// The NUL-terminated string around `at`, and `at`'s offset from its start.
fn string_at(data: &[u8], at: i64) -> (Vec<u8>, i64) {
    let Ok(pos) = usize::try_from(at) else { return (Vec::new(), at) };
    if pos > data.len() {
        return (Vec::new(), at);
    }
    let start = data[..pos].iter().rposition(|b| *b == 0).map_or(0, |p| p + 1);
    let end = data[pos..].iter().position(|b| *b == 0).map_or(data.len(), |p| pos + p);
    (data[start..end].to_vec(), at - start as i64)
}

fn constant_at(data: &[u8], at: i64, entry: u64) -> (Vec<u8>, i64) {
    let Ok(pos) = u64::try_from(at) else { return (Vec::new(), at) };
    let start = pos - pos % entry.max(1);
    let end = (start + entry).min(data.len() as u64);
    let content = data.get(start as usize..end as usize).unwrap_or(&[]).to_vec();
    (content, at - start as i64)
}

type SymbolRead = (Vec<ObjSymbol>, Option<String>, BTreeMap<usize, usize>);

fn read_symbols(file: &ElfFile64<'_, object::Endianness>, index_of: &BTreeMap<usize, usize>) -> SymbolRead {
    let endian = file.endian();
    let mut symbols = Vec::new();
    let mut source_file = None;
    let mut sym_index = BTreeMap::new();
    for sym in file.symbols() {
        let raw = sym.elf_symbol();
        let st_type = raw.st_type();
        if st_type == object::elf::STT_FILE {
            if source_file.is_none() {
                source_file = sym.name().ok().filter(|n| !n.is_empty()).map(str::to_owned);
            }
            continue;
        }
        let section = match sym.section() {
            SymbolSection::Section(idx) => index_of.get(&idx.0).copied(),
            _ => None,
        };
        let kind = match st_type {
            object::elf::STT_FUNC | object::elf::STT_GNU_IFUNC => SymKind::Function,
            object::elf::STT_OBJECT | object::elf::STT_TLS | object::elf::STT_COMMON => SymKind::Object,
            object::elf::STT_SECTION => SymKind::Section,
            _ => SymKind::Other,
        };
        sym_index.insert(sym.index().0, symbols.len());
        symbols.push(ObjSymbol {
            name: sym.name().unwrap_or("").to_owned(),
            kind,
            local: raw.st_bind() == object::elf::STB_LOCAL,
            section,
            value: raw.st_value(endian),
            size: raw.st_size(endian),
        });
    }
    (symbols, source_file, sym_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_found_by_content() {
        let data = b"abc\0hello\0x\0";
        assert_eq!(string_at(data, 4), (b"hello".to_vec(), 0));
        assert_eq!(string_at(data, 6), (b"hello".to_vec(), 2));
        assert_eq!(string_at(data, 0), (b"abc".to_vec(), 0));
        assert_eq!(string_at(data, 99), (Vec::new(), 99));
        assert_eq!(string_at(data, -3), (Vec::new(), -3));
    }

    #[test]
    fn a_pc_relative_field_counts_the_immediate_after_it() {
        use object::elf::R_X86_64_PC32;
        let code = [
            0x8b, 0x05, 0, 0, 0, 0, // mov x(%rip), %eax
            0x83, 0x05, 0, 0, 0, 0, 0x01, // addl $1, x(%rip)
            0xc7, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, // movl $0, x(%rip)
            0x66, 0xc7, 0x05, 0, 0, 0, 0, 0, 0, // movw $0, x(%rip)
            0xc3,
        ];
        let reloc = |offset| Reloc { offset, r_type: R_X86_64_PC32, symbol: 0, addend: 0, tail: 9 };
        let mut relocs = [reloc(2), reloc(8), reloc(15), reloc(26)];
        instruction_tails(&code, &mut relocs);
        let tails: Vec<u8> = relocs.iter().map(|r| r.tail).collect();
        assert_eq!(tails, [0, 1, 4, 2]);
        assert_eq!(relocs[1].bias(), 5);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ObjectFile::parse("x.o", b"\x7fELF garbage").is_err());
        assert!(ObjectFile::parse("x.o", &[]).is_err());
    }
}
