//! What `hotpatch build --explain` says: for every function that differs,
//! whether it is in the patch and why.

use crate::baseline::SymbolOrigin;
use crate::diff::{FunctionDiff, Verdict};
use serde::Serialize;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Serialize)]
pub struct Explain {
    pub baseline: String,
    pub build_id: String,
    /// Where the baseline's symbol addresses came from.
    pub symbols: SymbolOrigin,
    /// Every object that differs between the builds, and whether it is the baseline's.
    pub objects: Vec<ObjectReport>,
    pub functions: Vec<FunctionReport>,
    pub notes: Vec<String>,
}

impl Explain {
    pub fn new(baseline: &str, build_id: &str, symbols: SymbolOrigin) -> Explain {
        Explain {
            baseline: baseline.to_owned(),
            build_id: build_id.to_owned(),
            symbols,
            objects: Vec::new(),
            functions: Vec::new(),
            notes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectReport {
    pub path: String,
    /// Its functions are the baseline's code (run-pre match).
    pub in_baseline: bool,
    /// How many of its functions matched the baseline.
    pub matched: usize,
    pub mismatch: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionReport {
    pub object: String,
    pub name: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub in_patch: bool,
    pub reasons: Vec<String>,
}

/// gcc's names for the copies it makes of a function (IPA clones, split parts).
const CLONE_MARKS: [&str; 5] = [".isra", ".constprop", ".part", ".cold", ".lto_priv"];

fn clone_of(name: &str) -> Option<&str> {
    CLONE_MARKS.iter().filter_map(|m| name.find(m)).min().map(|i| &name[..i])
}

/// The reasons, in words, that a function is (or is not) in the patch.
pub fn reasons(f: &FunctionDiff, touched: &BTreeSet<String>, changed: &BTreeSet<&str>, in_patch: bool) -> Vec<String> {
    match f.verdict {
        Verdict::Unchanged if in_patch => {
            vec!["unchanged, but cannot be separated from a changed function (a jump into its body)".into()]
        }
        Verdict::Unchanged => Vec::new(),
        Verdict::LineOnly => vec!["only a __LINE__ constant differs (an assert moved): not a change".into()],
        Verdict::New if in_patch => vec!["new in the fixed build, used by the patch".into()],
        Verdict::New => vec!["new in the fixed build, not used by any patched function".into()],
        Verdict::Changed => changed_reasons(f, touched, changed),
    }
}

fn changed_reasons(f: &FunctionDiff, touched: &BTreeSet<String>, changed: &BTreeSet<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if touched.contains(&f.name) {
        out.push("changed in the source".to_owned());
    }
    if let Some(base) = clone_of(&f.name) {
        out.push(format!("IPA clone of {base}"));
    }
    for name in &f.refs_added {
        out.push(format!("now refers to {name}"));
    }
    for name in &f.refs_removed {
        out.push(format!("no longer refers to {name}"));
    }
    if out.is_empty() {
        let inlined: Vec<&str> =
            touched.iter().filter(|t| **t != f.name && !f.refs.contains(*t)).map(String::as_str).collect();
        let callees: Vec<&str> = changed.iter().copied().filter(|c| *c != f.name && f.refs.contains(*c)).collect();
        if !inlined.is_empty() {
            out.push(format!("inlines changed {}", inlined.join(", ")));
        }
        if !callees.is_empty() {
            out.push(format!("its register use assumptions changed (callee {}, -fipa-ra)", callees.join(", ")));
        }
        if out.is_empty() {
            out.push("its code changed".to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_name_their_origin() {
        assert_eq!(clone_of("parse.isra.0"), Some("parse"));
        assert_eq!(clone_of("f.constprop.0.isra.0"), Some("f"));
        assert_eq!(clone_of("g.cold"), Some("g"));
        assert_eq!(clone_of("plain"), None);
    }
}
