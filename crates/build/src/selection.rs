//! Choosing what goes into the payload from one object: the functions a
//! replaced function cannot be split from and the data they use. Shared by
//! the changed files (`builder`) and the files the fix adds (`added`).

use crate::objfile::{ObjectFile, RefKey, SectionClass, SymKind};
use crate::payload::Selection;
use std::collections::BTreeSet;

/// A global function of one of the callbacks' names (include/hotpatch.h).
pub fn is_callback(obj: &ObjectFile, sym: usize) -> bool {
    let s = &obj.symbols[sym];
    !s.local && s.kind == SymKind::Function && crate::runtime::CALLBACKS.contains(&s.name.as_str())
}

/// Adds to `chosen` the new functions it calls and every function it cannot
/// be split from (a jump into another function's body, either way).
pub fn close_over(obj: &ObjectFile, chosen: &mut BTreeSet<usize>, new_functions: &BTreeSet<usize>) {
    let functions: Vec<usize> = obj.functions().map(|(f, _)| f).collect();
    loop {
        let before = chosen.len();
        for &f in &functions {
            for (target, entry) in function_refs(obj, f) {
                let f_in = chosen.contains(&f);
                let t_in = chosen.contains(&target);
                if f_in && (new_functions.contains(&target) || !entry) {
                    chosen.insert(target);
                }
                if t_in && !entry {
                    chosen.insert(f);
                }
            }
        }
        if chosen.len() == before {
            return;
        }
    }
}

/// Functions of `obj` that function `f` refers to, and whether at their entry.
fn function_refs(obj: &ObjectFile, f: usize) -> Vec<(usize, bool)> {
    let Some(sec) = obj.symbols[f].section else { return Vec::new() };
    obj.sections[sec]
        .relocs
        .iter()
        .filter_map(|r| {
            let RefKey::Named { name, offset, .. } = obj.key(r) else { return None };
            let target = obj.find(&name).filter(|&t| obj.symbols[t].kind == SymKind::Function)?;
            Some((target, offset.wrapping_add(r.bias()) == 0))
        })
        .collect()
}

/// Read-only data the chosen code refers to is copied whole (it is
/// constant, so a copy is the same data); data objects the fix adds are new
/// state, copied one by one. Existing writable data stays the baseline's.
pub fn add_data(obj: &ObjectFile, new_data: &BTreeSet<String>, selection: &mut Selection) {
    let mut queue: Vec<usize> = selection.sections.iter().copied().collect();
    while let Some(sec) = queue.pop() {
        for r in &obj.sections[sec].relocs {
            let Some(target) = obj.symbols[r.symbol].section else { continue };
            match obj.sections[target].class {
                SectionClass::ReadOnly | SectionClass::Strings | SectionClass::Constants { .. }
                    if selection.sections.insert(target) =>
                {
                    queue.push(target);
                }
                SectionClass::Writable | SectionClass::Bss => {
                    if let RefKey::Named { name, .. } = obj.key(r)
                        && new_data.contains(&name)
                        && let Some(sym) = obj.find(&name)
                    {
                        selection.objects.insert(sym);
                    }
                }
                _ => {}
            }
        }
    }
}
