//! Reading a relocatable x86_64 object into the few facts the linker needs:
//! loadable sections with their bytes and relocations, and symbols. Every
//! field of the input is checked here, so layout and linking work on data
//! that is known to be consistent.

use crate::error::LinkError;
use crate::reloc::{self, RelocKind};
use object::elf;
use object::read::elf::{FileHeader, Rela, SectionHeader, SectionTable, Sym, SymbolTable};
use object::{Endianness, SectionIndex, SymbolIndex};

/// The largest section alignment honoured: the region base is only known to
/// be page aligned.
pub(crate) const MAX_ALIGN: u64 = 4096;

/// Which protection part of the region a section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    Text,
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub name: String,
    pub part: Part,
    pub align: u64,
    pub size: u64,
    /// `None` for `SHT_NOBITS`: zero-filled.
    pub data: Option<Vec<u8>>,
    /// `.eh_frame`: placed after the other read-only sections.
    pub unwind: bool,
    pub relocs: Vec<Reloc>,
}

#[derive(Debug, Clone)]
pub(crate) struct Reloc {
    pub offset: u64,
    pub kind: RelocKind,
    pub symbol: usize,
    pub addend: i64,
}

#[derive(Debug, Clone)]
pub(crate) enum Def {
    /// Symbol index 0, or a symbol with no meaning for us: value 0.
    Null,
    /// In loaded section `section` (index into `Input::sections`) at `offset`.
    Section { section: usize, offset: u64 },
    /// `SHN_COMMON`: allocated in bss by the layout.
    Common { size: u64, align: u64 },
    /// `SHN_ABS`.
    Absolute(u64),
    /// Supplied by the target process.
    Undefined { weak: bool },
    /// Defined in a section that is not loaded; referencing it is an error.
    Dropped { section: String },
}

#[derive(Debug, Clone)]
pub(crate) struct Symbol {
    /// For section symbols, the section's name (only used in messages).
    pub name: String,
    pub def: Def,
    pub function: bool,
    pub global: bool,
    /// Section and file symbols: never exported by name.
    pub anonymous: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub sections: Vec<Section>,
    pub symbols: Vec<Symbol>,
}

/// What to do with one section of the input.
enum Disposition {
    Load(Part),
    /// Unwind tables: loaded read-only, kept together and terminated.
    Unwind,
    /// Allocated but not loaded (notes); symbols in it may not be referenced.
    Drop,
    /// Not allocated at run time at all (debug info, symbol tables, ...).
    Ignore,
}

pub(crate) fn read(payload: &[u8]) -> Result<Input, LinkError> {
    // The `object` crate reads ELF structures in place and wants them
    // naturally aligned; a payload cut out of a package may not be.
    let mut buf = vec![0u8; payload.len() + 8];
    let pad = buf.as_ptr().align_offset(8).min(8);
    let data =
        buf.get_mut(pad..pad + payload.len()).ok_or_else(|| LinkError::Malformed("cannot buffer payload".into()))?;
    data.copy_from_slice(payload);
    let data: &[u8] = data;

    check_ident(data)?;
    let header = elf::FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let e_type = header.e_type(endian);
    if e_type != elf::ET_REL {
        return Err(LinkError::NotRelocatable(e_type));
    }
    let machine = header.e_machine(endian);
    if machine != elf::EM_X86_64 {
        return Err(LinkError::WrongMachine(machine));
    }
    let sections = header.sections(endian, data)?;
    let symtab = sections.symbols(endian, data, elf::SHT_SYMTAB)?;

    // ELF section index -> index into the loaded list, and names of dropped ones.
    let mut loaded_of: Vec<Option<usize>> = vec![None; sections.len()];
    let mut dropped: Vec<Option<String>> = vec![None; sections.len()];
    let mut loaded = Vec::new();
    for (index, sh) in sections.enumerate() {
        let name = section_name(&sections, endian, sh);
        match disposition(&name, sh, endian)? {
            Disposition::Ignore | Disposition::Drop => {
                tracing::trace!(section = %name, "section not loaded");
                if let Some(slot) = dropped.get_mut(index.0) {
                    *slot = Some(name);
                }
            }
            d @ (Disposition::Load(_) | Disposition::Unwind) => {
                let (part, unwind) = match d {
                    Disposition::Load(part) => (part, false),
                    _ => (Part::ReadOnly, true),
                };
                let align = sh.sh_addralign(endian).max(1);
                if !align.is_power_of_two() || align > MAX_ALIGN {
                    return Err(unsupported(
                        &name,
                        format!("alignment {align} is not a power of two up to {MAX_ALIGN}"),
                    ));
                }
                let size = sh.sh_size(endian);
                let data = if sh.sh_type(endian) == elf::SHT_NOBITS {
                    None
                } else {
                    let bytes = sh
                        .data(endian, data)
                        .map_err(|_| LinkError::Malformed(format!("section {name}: contents lie outside the file")))?;
                    Some(bytes.to_vec())
                };
                if let Some(slot) = loaded_of.get_mut(index.0) {
                    *slot = Some(loaded.len());
                }
                loaded.push(Section { name, part, align, size, data, unwind, relocs: Vec::new() });
            }
        }
    }

    let symbols = read_symbols(&symtab, endian, &loaded_of, &dropped, &loaded, &sections)?;
    read_relocations(&sections, endian, data, symtab.section(), &loaded_of, &mut loaded, &symbols)?;
    Ok(Input { sections: loaded, symbols })
}

fn check_ident(data: &[u8]) -> Result<(), LinkError> {
    let ident = data
        .get(..16)
        .ok_or_else(|| LinkError::Malformed(format!("only {} bytes, too short for an ELF header", data.len())))?;
    if ident[..4] != elf::ELFMAG {
        return Err(LinkError::Malformed("no ELF magic number (\\x7fELF) at the start".into()));
    }
    if ident[4] != elf::ELFCLASS64 {
        return Err(LinkError::WrongClass(format!("EI_CLASS is {}, expected 2 (ELFCLASS64)", ident[4])));
    }
    if ident[5] != elf::ELFDATA2LSB {
        return Err(LinkError::WrongClass(format!("EI_DATA is {}, expected 1 (ELFDATA2LSB)", ident[5])));
    }
    Ok(())
}

fn section_name(
    sections: &SectionTable<'_, elf::FileHeader64<Endianness>>,
    endian: Endianness,
    sh: &elf::SectionHeader64<Endianness>,
) -> String {
    match sections.section_name(endian, sh) {
        Ok(n) => String::from_utf8_lossy(n).into_owned(),
        Err(_) => format!("#{} (unreadable name)", sh.sh_name(endian)),
    }
}

fn unsupported(section: &str, reason: impl Into<String>) -> LinkError {
    LinkError::UnsupportedSection { section: section.to_string(), reason: reason.into() }
}

fn name_in(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| name == *p || name.strip_prefix(p).is_some_and(|rest| rest.starts_with('.')))
}

fn disposition(
    name: &str,
    sh: &elf::SectionHeader64<Endianness>,
    endian: Endianness,
) -> Result<Disposition, LinkError> {
    let flags = sh.sh_flags(endian);
    let sh_type = sh.sh_type(endian);
    if flags & u64::from(elf::SHF_ALLOC) == 0 {
        // Debug info, comments, symbol and string tables, relocations, groups.
        return Ok(Disposition::Ignore);
    }
    if flags & u64::from(elf::SHF_TLS) != 0 {
        return Err(unsupported(name, "thread-local storage: a patch region cannot add TLS to a running process"));
    }
    let constructor_types = [elf::SHT_INIT_ARRAY, elf::SHT_FINI_ARRAY, elf::SHT_PREINIT_ARRAY];
    if constructor_types.contains(&sh_type)
        || name_in(name, &[".init_array", ".fini_array", ".preinit_array", ".ctors", ".dtors", ".init", ".fini"])
    {
        return Err(unsupported(
            name,
            "constructors and destructors: the process has started already, so they would never run",
        ));
    }
    if flags & u64::from(elf::SHF_COMPRESSED) != 0 {
        return Err(unsupported(name, "compressed allocated section"));
    }
    match sh_type {
        elf::SHT_X86_64_UNWIND => return Ok(Disposition::Unwind),
        elf::SHT_PROGBITS if name == ".eh_frame" => return Ok(Disposition::Unwind),
        elf::SHT_NOTE => return Ok(Disposition::Drop),
        elf::SHT_PROGBITS | elf::SHT_NOBITS => {}
        other => {
            return Err(unsupported(name, format!("section type 0x{other:x} is not code or data")));
        }
    }
    let write = flags & u64::from(elf::SHF_WRITE) != 0;
    let exec = flags & u64::from(elf::SHF_EXECINSTR) != 0;
    let part = match (write, exec) {
        (true, true) => return Err(unsupported(name, "both writable and executable")),
        (false, true) => Part::Text,
        // Everything is relocated before the region is mapped, so data that
        // is only writable for the dynamic linker's sake (RELRO) can stay read-only.
        (true, false) if name_in(name, &[".data.rel.ro"]) => Part::ReadOnly,
        (true, false) => Part::ReadWrite,
        (false, false) => Part::ReadOnly,
    };
    Ok(Disposition::Load(part))
}

fn read_symbols(
    symtab: &SymbolTable<'_, elf::FileHeader64<Endianness>>,
    endian: Endianness,
    loaded_of: &[Option<usize>],
    dropped: &[Option<String>],
    loaded: &[Section],
    sections: &SectionTable<'_, elf::FileHeader64<Endianness>>,
) -> Result<Vec<Symbol>, LinkError> {
    let mut out = Vec::with_capacity(symtab.len());
    for (index, sym) in symtab.enumerate() {
        let st_type = sym.st_type();
        let raw_name = symtab
            .symbol_name(endian, sym)
            .map_err(|_| LinkError::Malformed(format!("symbol #{}: name lies outside the string table", index.0)))?;
        let mut name = String::from_utf8(raw_name.to_vec())
            .map_err(|_| LinkError::Malformed(format!("symbol #{}: name is not UTF-8", index.0)))?;
        let anonymous = matches!(st_type, elf::STT_SECTION | elf::STT_FILE) || name.is_empty();
        let shndx = sym.st_shndx(endian);
        let def = if index.0 == 0 {
            Def::Null
        } else if shndx == elf::SHN_ABS {
            Def::Absolute(sym.st_value(endian))
        } else if shndx == elf::SHN_COMMON {
            let align = sym.st_value(endian).max(1);
            if !align.is_power_of_two() || align > MAX_ALIGN {
                return Err(LinkError::UnsupportedSymbol {
                    symbol: name,
                    reason: format!("common symbol alignment {align} is not a power of two up to {MAX_ALIGN}"),
                });
            }
            Def::Common { size: sym.st_size(endian), align }
        } else {
            match symtab.symbol_section(endian, sym, index)? {
                None if shndx == elf::SHN_UNDEF || shndx == elf::SHN_XINDEX => {
                    Def::Undefined { weak: sym.st_bind() == elf::STB_WEAK }
                }
                None => {
                    return Err(LinkError::UnsupportedSymbol {
                        symbol: display_name(&name, index),
                        reason: format!("reserved section index 0x{shndx:x}"),
                    });
                }
                Some(SectionIndex(s)) => {
                    section_def(s, sym.st_value(endian), &name, index, loaded_of, dropped, loaded, sections)?
                }
            }
        };
        if st_type == elf::STT_SECTION {
            if let Some(SectionIndex(s)) = symtab.symbol_section(endian, sym, index)? {
                name = sections
                    .section(SectionIndex(s))
                    .map(|sh| section_name(sections, endian, sh))
                    .unwrap_or_else(|_| format!("section #{s}"));
            }
        }
        if matches!(def, Def::Section { .. }) && st_type == elf::STT_GNU_IFUNC {
            return Err(LinkError::UnsupportedSymbol {
                symbol: name,
                reason: "indirect function (IFUNC) definitions need a run-time resolver call".into(),
            });
        }
        if matches!(def, Def::Undefined { .. }) && name.is_empty() {
            return Err(LinkError::Malformed(format!("symbol #{} is undefined and has no name", index.0)));
        }
        out.push(Symbol {
            name,
            def,
            function: st_type == elf::STT_FUNC,
            global: sym.st_bind() != elf::STB_LOCAL,
            anonymous,
        });
    }
    Ok(out)
}

fn display_name(name: &str, index: SymbolIndex) -> String {
    if name.is_empty() { format!("#{}", index.0) } else { name.to_string() }
}

#[allow(clippy::too_many_arguments)]
fn section_def(
    s: usize,
    value: u64,
    name: &str,
    index: SymbolIndex,
    loaded_of: &[Option<usize>],
    dropped: &[Option<String>],
    loaded: &[Section],
    sections: &SectionTable<'_, elf::FileHeader64<Endianness>>,
) -> Result<Def, LinkError> {
    if s >= sections.len() {
        return Err(LinkError::Malformed(format!(
            "symbol {} refers to section #{s}, but there are only {}",
            display_name(name, index),
            sections.len()
        )));
    }
    if let Some(l) = loaded_of.get(s).copied().flatten() {
        let size = loaded.get(l).map_or(0, |sec| sec.size);
        if value > size {
            return Err(LinkError::Malformed(format!(
                "symbol {} lies at offset 0x{value:x}, past the end of its section (0x{size:x} bytes)",
                display_name(name, index)
            )));
        }
        return Ok(Def::Section { section: l, offset: value });
    }
    let section = dropped.get(s).cloned().flatten().unwrap_or_else(|| format!("#{s}"));
    Ok(Def::Dropped { section })
}

fn read_relocations(
    sections: &SectionTable<'_, elf::FileHeader64<Endianness>>,
    endian: Endianness,
    data: &[u8],
    symtab_index: SectionIndex,
    loaded_of: &[Option<usize>],
    loaded: &mut [Section],
    symbols: &[Symbol],
) -> Result<(), LinkError> {
    for (_, sh) in sections.enumerate() {
        let sh_type = sh.sh_type(endian);
        if sh_type != elf::SHT_RELA && sh_type != elf::SHT_REL {
            continue;
        }
        let target = usize::try_from(sh.sh_info(endian)).unwrap_or(usize::MAX);
        let Some(l) = loaded_of.get(target).copied().flatten() else {
            // Relocations of sections we do not load (debug info).
            continue;
        };
        let rel_name = section_name(sections, endian, sh);
        if sh_type == elf::SHT_REL {
            return Err(unsupported(&rel_name, "SHT_REL relocations (x86_64 objects use SHT_RELA)"));
        }
        if sh.sh_link(endian) as usize != symtab_index.0 || symtab_index.0 == 0 {
            return Err(LinkError::Malformed(format!(
                "relocation section {rel_name} does not refer to the symbol table"
            )));
        }
        let Some((relas, _)) = sh.rela(endian, data).map_err(|e| LinkError::Malformed(format!("{rel_name}: {e}")))?
        else {
            continue;
        };
        let Some(section) = loaded.get_mut(l) else {
            continue;
        };
        for rela in relas {
            let offset = rela.r_offset(endian);
            let r_type = rela.r_type(endian, false);
            let sym = rela.r_sym(endian, false) as usize;
            let bad = |reason: String| LinkError::BadRelocation { section: section.name.clone(), offset, reason };
            let kind = RelocKind::from_elf(r_type).ok_or_else(|| LinkError::UnsupportedRelocation {
                kind: match reloc::refusal_reason(r_type) {
                    Some(why) => format!("{r_type} ({}: {why})", reloc::type_name(r_type)),
                    None => format!("{r_type} ({})", reloc::type_name(r_type)),
                },
                section: section.name.clone(),
                offset,
            })?;
            if kind == RelocKind::None {
                continue;
            }
            let end = offset.checked_add(kind.width()).ok_or_else(|| bad("offset overflows".into()))?;
            if section.data.is_none() {
                return Err(bad("relocation in a section without contents (SHT_NOBITS)".into()));
            }
            if end > section.size {
                return Err(bad(format!(
                    "{} bytes at this offset run past the section end (0x{:x})",
                    kind.width(),
                    section.size
                )));
            }
            let symbol = symbols.get(sym).ok_or_else(|| bad(format!("symbol index {sym} is out of range")))?;
            // The payload cannot define thread-local variables (its TLS
            // sections are refused), so a TLS relocation names one of the process's.
            if kind.is_tls() && !matches!(symbol.def, Def::Undefined { .. }) {
                return Err(bad(format!(
                    "{} refers to {}, which is not a thread-local variable of the target process",
                    kind.name(),
                    symbol.name
                )));
            }
            if let Def::Dropped { section: where_ } = &symbol.def {
                return Err(bad(format!(
                    "refers to {}, defined in section {where_}, which is not loaded",
                    symbol.name
                )));
            }
            section.relocs.push(Reloc { offset, kind, symbol: sym, addend: rela.r_addend(endian) });
        }
    }
    Ok(())
}
