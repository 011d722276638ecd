//! Source files the fix adds: objects only the fixed build has. Nothing in
//! them is in the baseline, so nothing of theirs gets a site: a function of
//! theirs goes into the patch when replaced code reaches it (a call, an
//! address taken, a variable read), or when it is a callback and the fixed
//! build links the file into the baseline's file. Their data is new state.

use crate::objfile::{ObjectFile, SymKind};
use crate::payload::Selection;
use crate::selection::{add_data, close_over, is_callback};
use std::collections::{BTreeMap, BTreeSet};

/// An object of the fixed build that the original build does not have.
pub struct AddedObject {
    pub object: ObjectFile,
    /// Whether the fixed build links it into the baseline's file; `None`
    /// where that cannot be told (the fixed link has no symbol table), and
    /// then only what replaced code reaches is taken.
    pub in_baseline: Option<bool>,
}

/// What each added object (by index into `added`) puts into the patch, given
/// what the paired objects put in (`(object, selection)`).
pub fn select(added: &[AddedObject], paired: &[(&ObjectFile, &Selection)]) -> BTreeMap<usize, Selection> {
    let mut chosen: Vec<BTreeSet<usize>> = added.iter().map(callbacks).collect();
    let mut objects: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); added.len()];
    loop {
        let out = selections(added, &mut chosen, &objects);
        let mut demanded = BTreeSet::new();
        for (obj, sel) in paired {
            demanded.extend(undefined_names(obj, sel));
        }
        for (&k, sel) in &out {
            demanded.extend(undefined_names(&added[k].object, sel));
        }
        if !take_demanded(added, &demanded, &mut chosen, &mut objects) {
            return out;
        }
    }
}

/// The callbacks of an object linked into the baseline's file.
fn callbacks(a: &AddedObject) -> BTreeSet<usize> {
    if a.in_baseline != Some(true) {
        return BTreeSet::new();
    }
    a.object.functions().map(|(f, _)| f).filter(|&f| is_callback(&a.object, f)).collect()
}

/// Each added object's selection from its chosen functions: what they
/// cannot be split from, and the data they use (all of it new).
fn selections(
    added: &[AddedObject],
    chosen: &mut [BTreeSet<usize>],
    objects: &[BTreeSet<usize>],
) -> BTreeMap<usize, Selection> {
    let mut out = BTreeMap::new();
    for (k, a) in added.iter().enumerate() {
        if chosen[k].is_empty() && objects[k].is_empty() {
            continue;
        }
        let obj = &a.object;
        let all_functions: BTreeSet<usize> = obj.functions().map(|(f, _)| f).collect();
        close_over(obj, &mut chosen[k], &all_functions);
        let mut selection = Selection::default();
        selection.sections.extend(chosen[k].iter().filter_map(|&f| obj.symbols[f].section));
        selection.objects.extend(objects[k].iter().copied());
        add_data(obj, &data_names(obj), &mut selection);
        out.insert(k, selection);
    }
    out
}

/// Global names the selected sections refer to without defining them.
fn undefined_names(obj: &ObjectFile, selection: &Selection) -> BTreeSet<String> {
    selection
        .sections
        .iter()
        .flat_map(|&sec| obj.sections[sec].relocs.iter())
        .map(|r| &obj.symbols[r.symbol])
        .filter(|s| s.section.is_none() && !s.local && !s.name.is_empty())
        .map(|s| s.name.clone())
        .collect()
}

/// Adds the global functions and data objects `demanded` names, of added
/// objects linked into the baseline's file (or where that is unknown);
/// whether anything was new.
fn take_demanded(
    added: &[AddedObject],
    demanded: &BTreeSet<String>,
    chosen: &mut [BTreeSet<usize>],
    objects: &mut [BTreeSet<usize>],
) -> bool {
    let mut grew = false;
    // A file linked into another file than the baseline's defines names of
    // that file's, not this one's.
    let candidates = added.iter().enumerate().filter(|(_, a)| a.in_baseline != Some(false));
    for (k, a) in candidates {
        for (i, s) in a.object.symbols.iter().enumerate() {
            if s.local || s.section.is_none() || !demanded.contains(&s.name) {
                continue;
            }
            grew |= match s.kind {
                SymKind::Function => chosen[k].insert(i),
                SymKind::Object => objects[k].insert(i),
                _ => false,
            };
        }
    }
    grew
}

/// Every data object of an added object is new.
pub fn data_names(obj: &ObjectFile) -> BTreeSet<String> {
    obj.data_objects().map(|(i, _)| obj.symbols[i].name.clone()).collect()
}
