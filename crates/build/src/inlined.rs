//! Where gcc inlined a function, read from the baseline's DWARF: each
//! `DW_TAG_inlined_subroutine` names (through its abstract origin) the
//! function inlined, inside the subprogram that holds it.
//!
//! A hand-written replacement of a function that was also inlined elsewhere
//! leaves those inlined copies running the old code: `hotpatch pack` refuses
//! it and names the callers (the builder finds and replaces them itself).

use crate::dwarf::Slice;
use gimli::{AttributeValue, DW_AT_abstract_origin, DW_AT_name, DW_AT_specification, DwTag};
use std::collections::{BTreeMap, BTreeSet};

/// Function name → names of the functions it was inlined into. Empty when
/// the file has no readable DWARF; malformed DWARF yields what was read.
pub fn inlined_into(elf: &[u8]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    crate::dwarf::for_each_unit(elf, |dwarf, unit| read_unit(dwarf, unit, &mut out));
    out
}

fn read_unit<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &gimli::Unit<Slice<'a>>,
    out: &mut BTreeMap<String, BTreeSet<String>>,
) -> gimli::Result<()> {
    // The enclosing concrete subprogram at each depth of the walk.
    let mut stack: Vec<(isize, Option<String>)> = Vec::new();
    let mut entries = unit.entries();
    while let Some(entry) = entries.next_dfs()? {
        let depth = entry.depth();
        stack.retain(|(d, _)| *d < depth);
        let tag: DwTag = entry.tag();
        if tag == gimli::DW_TAG_subprogram {
            stack.push((depth, name_of(dwarf, unit, entry, 0)));
        } else if tag == gimli::DW_TAG_inlined_subroutine
            && let Some(callee) = name_of(dwarf, unit, entry, 0)
            && let Some(caller) = stack.iter().rev().find_map(|(_, n)| n.clone())
        {
            out.entry(callee).or_default().insert(caller);
        }
    }
    Ok(())
}

/// The name of an entry, following abstract origins and specifications
/// (within the unit) a few steps.
fn name_of<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &gimli::Unit<Slice<'a>>,
    entry: &gimli::DebuggingInformationEntry<Slice<'a>>,
    hops: u32,
) -> Option<String> {
    if let Some(value) = entry.attr_value(DW_AT_name) {
        let s = dwarf.attr_string(unit, value).ok()?;
        return Some(String::from_utf8_lossy(s.slice()).into_owned());
    }
    if hops > 4 {
        return None;
    }
    for attr in [DW_AT_abstract_origin, DW_AT_specification] {
        if let Some(AttributeValue::UnitRef(offset)) = entry.attr_value(attr) {
            let origin = unit.entry(offset).ok()?;
            return name_of(dwarf, unit, &origin, hops + 1);
        }
    }
    None
}
