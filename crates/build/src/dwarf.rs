//! Reading a file's DWARF unit by unit: what the builder's DWARF readers
//! (`inlined`, `regalloc`, `signature`) share. A relocatable object's debug
//! sections are relocated first: there, references from `.debug_info` into
//! `.debug_str` and `.debug_abbrev` are relocations whose fields hold zero
//! until linked. A linked file's sections have none and are read as they are.

use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget};
use std::borrow::Cow;

pub type Slice<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

/// Calls `each` with every compilation unit of `elf`'s DWARF, in order, until
/// one fails. Nothing when the file has no DWARF or it cannot be read;
/// malformed DWARF yields the units before it.
pub fn for_each_unit(
    elf: &[u8],
    mut each: impl FnMut(&gimli::Dwarf<Slice<'_>>, &gimli::Unit<Slice<'_>>) -> gimli::Result<()>,
) {
    let Ok(file) = object::File::parse(elf) else { return };
    if file.section_by_name(".debug_info").is_none() {
        return;
    }
    let endian = if file.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> { Ok(relocated(&file, id.name())) };
    let Ok(sections) = gimli::DwarfSections::load(load) else { return };
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, endian));
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else { break };
        if each(&dwarf, &unit).is_err() {
            break;
        }
    }
}

/// A debug section with the file's absolute relocations applied.
fn relocated<'a>(file: &object::File<'a>, name: &str) -> Cow<'a, [u8]> {
    let Some(section) = file.section_by_name(name) else { return Cow::Borrowed(&[]) };
    let Ok(data) = section.uncompressed_data() else { return Cow::Borrowed(&[]) };
    let mut relocations = section.relocations().peekable();
    if relocations.peek().is_none() {
        return data;
    }
    let mut bytes = data.into_owned();
    for (offset, reloc) in relocations {
        let width = match reloc.flags() {
            RelocationFlags::Elf { r_type: object::elf::R_X86_64_32 } => 4,
            RelocationFlags::Elf { r_type: object::elf::R_X86_64_64 } => 8,
            _ => continue,
        };
        let base = match reloc.target() {
            RelocationTarget::Symbol(index) => file.symbol_by_index(index).map(|s| s.address()).unwrap_or(0),
            _ => 0,
        };
        let value = base.wrapping_add_signed(reloc.addend()).to_le_bytes();
        let Some(field) = usize::try_from(offset).ok().and_then(|at| bytes.get_mut(at..at.checked_add(width)?)) else {
            continue;
        };
        field.copy_from_slice(&value[..width]);
    }
    Cow::Owned(bytes)
}
