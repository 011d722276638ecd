//! Comparing an object of the original build with the same object of the
//! fixed build, function by function and data object by data object.
//!
//! Two functions are the same when their bytes are equal outside relocation
//! fields and every relocation refers to the same thing ([`RefKey`]). That is
//! the whole safety argument for default `-O2` builds: whatever gcc did to a
//! caller because a callee changed (inlining, IPA clones, `-fipa-ra` register
//! assumptions) shows in the caller's code, so the caller is in the patch.
//! What is left out is code the fixed build would run unchanged.

use crate::objfile::{ObjectFile, RefKey, SectionClass, field_width};
use std::collections::{BTreeMap, BTreeSet};

/// A function's code with relocation fields blanked, and what each refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub bytes: Vec<u8>,
    pub refs: Vec<(u64, u32, RefKey)>,
}

/// The canonical form of the function or object `sym` of `obj`.
pub fn canonical(obj: &ObjectFile, sym: usize) -> Canonical {
    let s = &obj.symbols[sym];
    let Some(sec_index) = s.section else { return Canonical { bytes: Vec::new(), refs: Vec::new() } };
    let section = &obj.sections[sec_index];
    let start = s.value;
    let end = if s.size > 0 { s.value + s.size } else { section.size };
    let mut bytes = if section.class == SectionClass::Bss {
        vec![0; end.saturating_sub(start) as usize]
    } else {
        section.data.get(start as usize..(end as usize).min(section.data.len())).unwrap_or(&[]).to_vec()
    };
    let mut refs = Vec::new();
    for r in section.relocs.iter().filter(|r| r.offset >= start && r.offset < end) {
        let at = (r.offset - start) as usize;
        let width = field_width(r.r_type).unwrap_or(4);
        for b in bytes.iter_mut().skip(at).take(width) {
            *b = 0;
        }
        refs.push((r.offset - start, r.r_type, obj.key(r)));
    }
    Canonical { bytes, refs }
}

/// Why a function is in the patch, or why it is not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum Verdict {
    Unchanged,
    /// Only a `__LINE__` constant (an `assert` below the fix moved) differs.
    LineOnly,
    Changed,
    New,
}

/// The comparison of one function.
#[derive(Debug, Clone)]
pub struct FunctionDiff {
    pub name: String,
    pub local: bool,
    /// Symbol index in the fixed object.
    pub new_sym: usize,
    /// Symbol index in the original object, when it existed there.
    pub old_sym: Option<usize>,
    pub verdict: Verdict,
    /// Names referenced by the fixed code and not by the original, and back.
    pub refs_added: Vec<String>,
    pub refs_removed: Vec<String>,
    /// Every name the fixed code refers to.
    pub refs: BTreeSet<String>,
}

/// A data object whose contents differ.
#[derive(Debug, Clone)]
pub struct DataChange {
    pub name: String,
    pub writable: bool,
    pub new_sym: Option<usize>,
    pub what: String,
}

/// Everything that differs between an original object and its fixed one.
#[derive(Debug, Clone)]
pub struct ObjectDiff {
    pub functions: Vec<FunctionDiff>,
    pub data: Vec<DataChange>,
    /// Constructor sections that differ.
    pub constructors_changed: Vec<String>,
    /// Data objects the fixed build adds (no original): new state.
    pub new_data: BTreeSet<String>,
}

impl ObjectDiff {
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
            && self.constructors_changed.is_empty()
            && self.functions.iter().all(|f| matches!(f.verdict, Verdict::Unchanged | Verdict::LineOnly))
    }
}

/// The name a local symbol had in the other build: gcc numbers function-local
/// statics and clones (`counter.0`, `f.isra.1`) per file, so a fix earlier in
/// the file can renumber them.
fn base_name(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// Pairs each fixed data object with its original: by name, then a renumbered
/// local by its base name when that is unambiguous on both sides.
pub fn correlate_data(old: &ObjectFile, new: &ObjectFile) -> BTreeMap<usize, usize> {
    let by_name = |obj: &ObjectFile| -> BTreeMap<String, usize> {
        obj.data_objects().map(|(i, _)| (obj.symbols[i].name.clone(), i)).collect()
    };
    let (old_names, new_names) = (by_name(old), by_name(new));
    let mut pairs = BTreeMap::new();
    for (name, &n) in &new_names {
        if let Some(&o) = old_names.get(name) {
            pairs.insert(n, o);
        }
    }
    let unpaired_old: Vec<usize> = old_names.values().copied().filter(|o| !pairs.values().any(|v| v == o)).collect();
    let unpaired_new: Vec<usize> = new_names.values().copied().filter(|n| !pairs.contains_key(n)).collect();
    for &n in &unpaired_new {
        let base = base_name(&new.symbols[n].name);
        let same = |obj: &ObjectFile, list: &[usize]| -> Vec<usize> {
            list.iter().copied().filter(|&i| obj.symbols[i].local && base_name(&obj.symbols[i].name) == base).collect()
        };
        if let ([o], [_]) = (same(old, &unpaired_old).as_slice(), same(new, &unpaired_new).as_slice()) {
            pairs.insert(n, *o);
        }
    }
    pairs
}

/// Rewrites the references of `c` (made in the fixed object) to the names
/// the original object uses for the same data objects.
fn rename_refs(c: &mut Canonical, renames: &BTreeMap<String, String>) {
    for (_, _, key) in &mut c.refs {
        if let RefKey::Named { name, .. } = key
            && let Some(old) = renames.get(name)
        {
            *name = old.clone();
        }
    }
}

/// Compares `old` and `new`, two builds of the same source file.
pub fn diff_objects(old: &ObjectFile, new: &ObjectFile, shifts: Option<&LineShifts>) -> ObjectDiff {
    let data_pairs = correlate_data(old, new);
    let renames: BTreeMap<String, String> = data_pairs
        .iter()
        .filter(|(n, o)| new.symbols[**n].name != old.symbols[**o].name)
        .map(|(n, o)| (new.symbols[*n].name.clone(), old.symbols[*o].name.clone()))
        .collect();
    let data = diff_data(old, new, &data_pairs, &renames);
    let readonly_changed: BTreeSet<&str> =
        data.iter().filter(|d| !d.writable).filter_map(|d| d.new_sym.map(|s| new.symbols[s].name.as_str())).collect();
    let mut functions = Vec::new();
    for (n, _) in new.functions() {
        let name = &new.symbols[n].name;
        let old_sym = old.functions().map(|(o, _)| o).find(|&o| &old.symbols[o].name == name);
        let mut c_new = canonical(new, n);
        rename_refs(&mut c_new, &renames);
        let (verdict, added, removed) = match old_sym {
            None => (Verdict::New, Vec::new(), Vec::new()),
            Some(o) => {
                let c_old = canonical(old, o);
                let touches_changed_data = c_new.refs.iter().any(|(_, _, k)| match k {
                    RefKey::Named { name, .. } => readonly_changed.contains(name.as_str()),
                    _ => false,
                });
                let verdict = if touches_changed_data { Verdict::Changed } else { compare(&c_old, &c_new, shifts) };
                let (a, r) = ref_delta(&c_old, &c_new);
                (verdict, a, r)
            }
        };
        functions.push(FunctionDiff {
            name: name.clone(),
            local: new.symbols[n].local,
            new_sym: n,
            old_sym,
            verdict,
            refs_added: added,
            refs_removed: removed,
            refs: c_new.refs.iter().filter_map(|(_, _, k)| k.name().map(str::to_owned)).collect(),
        });
    }
    let new_data = new
        .data_objects()
        .filter(|(n, _)| !data_pairs.contains_key(n))
        .map(|(n, _)| new.symbols[n].name.clone())
        .collect();
    ObjectDiff { functions, data, constructors_changed: diff_constructors(old, new), new_data }
}

/// How a source fix moved the lines of one file: after old line `line`,
/// every later line is `shift` lines further down (cumulative, in order).
pub type LineShifts = [(u64, i64)];

fn compare(old: &Canonical, new: &Canonical, shifts: Option<&LineShifts>) -> Verdict {
    if old == new {
        return Verdict::Unchanged;
    }
    if old.refs == new.refs && old.bytes.len() == new.bytes.len() && only_line_constants(old, new, shifts) {
        return Verdict::LineOnly;
    }
    Verdict::Changed
}

/// Whether every byte that differs is inside the immediate of a
/// `mov $imm32, %reg` (opcode `b8+r`) whose old value is a line of the file
/// and whose new value is that line where the fix moved it: `__LINE__`
/// passed to `__assert_fail` or to a function of the program's own (expat
/// passes it to its accounting). Without the fix's line shifts (objects built
/// elsewhere), only `%edx` of a function calling `__assert_fail` qualifies.
/// Decoding this one form needs no disassembler.
fn only_line_constants(old: &Canonical, new: &Canonical, shifts: Option<&LineShifts>) -> bool {
    let asserts = old.refs.iter().any(|(_, _, k)| k.name() == Some("__assert_fail"));
    let differing: Vec<usize> = (0..old.bytes.len()).filter(|&i| old.bytes[i] != new.bytes[i]).collect();
    if differing.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < differing.len() {
        let at = differing[i];
        let Some(opcode) = (1..=4).map(|back| at.wrapping_sub(back)).find(|&o| {
            o < at && is_mov_imm32(&old.bytes, o) && is_mov_imm32(&new.bytes, o) && old.bytes[o] == new.bytes[o]
        }) else {
            return false;
        };
        let imm = opcode + 1..opcode + 5;
        let value = |b: &[u8]| u32::from_le_bytes([b[imm.start], b[imm.start + 1], b[imm.start + 2], b[imm.start + 3]]);
        let (was, now) = (u64::from(value(&old.bytes)), u64::from(value(&new.bytes)));
        let plausible = match shifts {
            Some(shifts) => shift_at(shifts, was).is_some_and(|d| d != 0 && was as i64 + d == now as i64),
            None => asserts && old.bytes[opcode] == 0xba,
        };
        if !plausible {
            return false;
        }
        while i < differing.len() && imm.contains(&differing[i]) {
            i += 1;
        }
    }
    true
}

fn is_mov_imm32(bytes: &[u8], at: usize) -> bool {
    at + 5 <= bytes.len() && (0xb8..=0xbf).contains(&bytes[at])
}

/// How far the fix moved old line `line`.
fn shift_at(shifts: &LineShifts, line: u64) -> Option<i64> {
    if line == 0 {
        return None;
    }
    Some(shifts.iter().take_while(|(after, _)| *after < line).last().map_or(0, |(_, d)| *d))
}

fn ref_delta(old: &Canonical, new: &Canonical) -> (Vec<String>, Vec<String>) {
    let names = |c: &Canonical| -> BTreeSet<String> {
        c.refs.iter().filter_map(|(_, _, k)| k.name().map(str::to_owned)).collect()
    };
    let (o, n) = (names(old), names(new));
    (n.difference(&o).cloned().collect(), o.difference(&n).cloned().collect())
}

fn diff_data(
    old: &ObjectFile,
    new: &ObjectFile,
    pairs: &BTreeMap<usize, usize>,
    renames: &BTreeMap<String, String>,
) -> Vec<DataChange> {
    let mut out = Vec::new();
    for (n, sec) in new.data_objects() {
        let Some(&o) = pairs.get(&n) else { continue };
        let class = new.sections[sec].class;
        let writable = matches!(class, SectionClass::Writable | SectionClass::Bss | SectionClass::Tls);
        let (so, sn) = (&old.symbols[o], &new.symbols[n]);
        let what = if so.size != sn.size {
            format!("its size changed from {} to {} bytes", so.size, sn.size)
        } else {
            let mut c_new = canonical(new, n);
            rename_refs(&mut c_new, renames);
            if canonical(old, o) == c_new {
                continue;
            }
            "its initial value changed".to_owned()
        };
        out.push(DataChange { name: sn.name.clone(), writable, new_sym: Some(n), what });
    }
    out
}

fn diff_constructors(old: &ObjectFile, new: &ObjectFile) -> Vec<String> {
    let ctors = |obj: &ObjectFile| -> BTreeMap<String, Vec<RefKey>> {
        obj.sections
            .iter()
            .filter(|s| s.class == SectionClass::Constructors)
            .map(|s| (s.name.clone(), s.relocs.iter().map(|r| obj.key(r)).collect()))
            .collect()
    };
    let (o, n) = (ctors(old), ctors(new));
    let names: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    names.into_iter().filter(|k| o.get(*k) != n.get(*k)).cloned().collect()
}

/// Functions named in a constructor section of `obj`.
pub fn constructor_functions(obj: &ObjectFile) -> BTreeSet<String> {
    obj.sections
        .iter()
        .filter(|s| s.class == SectionClass::Constructors)
        .flat_map(|s| s.relocs.iter().filter_map(|r| obj.key(r).name().map(str::to_owned)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbered_locals_share_a_base_name() {
        assert_eq!(base_name("counter.0"), "counter");
        assert_eq!(base_name("f.isra.12"), "f.isra");
        assert_eq!(base_name("plain"), "plain");
        assert_eq!(base_name("x."), "x.");
    }

    #[test]
    fn a_moved_assert_line_is_not_a_change() {
        let refs = vec![(20, 4, RefKey::Named { name: "__assert_fail".into(), local: false, offset: -4 })];
        let old = Canonical { bytes: vec![0x55, 0xba, 0x10, 0x00, 0x00, 0x00, 0xe8, 0, 0, 0, 0], refs: refs.clone() };
        let mut new = old.clone();
        new.bytes[2] = 0x12;
        assert_eq!(compare(&old, &new, None), Verdict::LineOnly);
        // Known shifts: line 16 moved by 2 lines (a hunk at line 10 added two).
        assert_eq!(compare(&old, &new, Some(&[(10, 2)])), Verdict::LineOnly);
        assert_eq!(compare(&old, &new, Some(&[(10, 3)])), Verdict::Changed, "not where the fix moved it");
        assert_eq!(compare(&old, &new, Some(&[(20, 2)])), Verdict::Changed, "a line above the fix does not move");
        let mut other = old.clone();
        other.bytes[0] = 0x53;
        assert_eq!(compare(&old, &other, None), Verdict::Changed);
        let no_assert = Canonical { bytes: new.bytes.clone(), refs: Vec::new() };
        assert_eq!(compare(&Canonical { refs: Vec::new(), ..old }, &no_assert, None), Verdict::Changed);
    }
}
