//! Finding the objects of a build tree: relocatable objects, paired by
//! their path in the two trees, and the linked files (a stripped baseline's
//! stand-in for symbols once its code is proven the same).

use anyhow::Context;
use hotpatch_build::{AddedObject, ObjectFile, ObjectPair};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ET_REL: u16 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// ELF files of a tree by relative path: relocatable objects, and linked files.
type ElfFiles = (BTreeMap<String, PathBuf>, Vec<(String, PathBuf)>);

fn elf_files(root: &Path) -> anyhow::Result<ElfFiles> {
    let mut relocatable = BTreeMap::new();
    let mut linked = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let Some(e_type) = elf_type(&path) else { continue };
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            match e_type {
                ET_REL => {
                    relocatable.insert(rel, path);
                }
                ET_DYN | ET_EXEC => linked.push((rel, path)),
                _ => {}
            }
        }
    }
    Ok((relocatable, linked))
}

/// The ELF type of a file, read from its header alone.
fn elf_type(path: &Path) -> Option<u16> {
    use std::io::Read;
    let mut header = [0u8; 18];
    std::fs::File::open(path).ok()?.read_exact(&mut header).ok()?;
    (&header[..4] == b"\x7fELF" && header[4] == 2 && header[5] == 1)
        .then(|| u16::from_le_bytes([header[16], header[17]]))
}

/// The objects of the two trees: every object present in both that differs,
/// parsed as a pair, the paths of those that do not, and the objects only
/// the fixed tree has (source files the fix adds).
pub struct Objects {
    pub pairs: Vec<ObjectPair>,
    pub unchanged: Vec<(String, PathBuf)>,
    pub added: Vec<(String, PathBuf)>,
}

pub fn pairs(old: &Path, new: &Path) -> anyhow::Result<Objects> {
    let (old_objects, _) = elf_files(old)?;
    let (new_objects, _) = elf_files(new)?;
    let mut out = Vec::new();
    let mut unchanged = Vec::new();
    for (rel, old_path) in &old_objects {
        let Some(new_path) = new_objects.get(rel) else { continue };
        let old_bytes = std::fs::read(old_path).with_context(|| format!("cannot read {}", old_path.display()))?;
        let new_bytes = std::fs::read(new_path).with_context(|| format!("cannot read {}", new_path.display()))?;
        if old_bytes == new_bytes {
            unchanged.push((rel.clone(), old_path.clone()));
            continue;
        }
        out.push(ObjectPair {
            old: ObjectFile::parse(rel, &old_bytes)?.with_signatures(&old_bytes),
            new: ObjectFile::parse(rel, &new_bytes)?.with_signatures(&new_bytes),
        });
    }
    let added = new_objects.iter().filter(|(k, _)| !old_objects.contains_key(*k));
    let added: Vec<(String, PathBuf)> = added.map(|(k, p)| (k.clone(), p.clone())).collect();
    if old_objects.is_empty() {
        anyhow::bail!("no relocatable objects (.o) under {}", old.display());
    }
    Ok(Objects { pairs: out, unchanged, added })
}

/// The unchanged objects, parsed: what a stripped baseline's symbols may be
/// found through (see `DiffBuildRequest::unchanged`). An object that does
/// not parse is left out: it only cannot help.
pub fn parse_unchanged(unchanged: &[(String, PathBuf)]) -> Vec<ObjectFile> {
    unchanged.iter().filter_map(|(rel, path)| ObjectFile::parse(rel, &std::fs::read(path).ok()?).ok()).collect()
}

/// The objects only the fixed tree has, parsed, each with whether the fixed
/// build linked it into a file named like the baseline: a linked file of
/// that name whose symbol table defines every global function of the object.
pub fn parse_added(
    added: &[(String, PathBuf)],
    new_root: &Path,
    baseline_name: &str,
) -> anyhow::Result<Vec<AddedObject>> {
    let (_, linked) = elf_files(new_root)?;
    let links: Vec<Vec<u8>> = linked
        .iter()
        .filter(|(rel, _)| same_file_name(rel, baseline_name))
        .filter_map(|(_, path)| std::fs::read(path).ok())
        .collect();
    added
        .iter()
        .map(|(rel, path)| {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let object = ObjectFile::parse(rel, &bytes)?;
            let in_baseline = linked_into(&object, &links);
            Ok(AddedObject { object, in_baseline })
        })
        .collect()
}

/// `lib/.libs/libfoo.so.1.2.3` is named like `libfoo.so.1` and `libfoo.so`:
/// the same up to a version suffix.
fn same_file_name(rel: &str, baseline_name: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let stem = |n: &str| n.find(".so").map_or(n.to_string(), |i| n[..i + 3].to_string());
    name == baseline_name || stem(name) == stem(baseline_name)
}

/// Whether one of `links` defines every global function of `object`;
/// `None` when no link has a symbol table to tell by.
fn linked_into(object: &ObjectFile, links: &[Vec<u8>]) -> Option<bool> {
    use object::{Object, ObjectSymbol};
    let wanted: Vec<&str> =
        object.functions().map(|(f, _)| &object.symbols[f]).filter(|s| !s.local).map(|s| s.name.as_str()).collect();
    let mut told = None;
    for bytes in links {
        let Ok(file) = object::File::parse(bytes.as_slice()) else { continue };
        let defined: std::collections::BTreeSet<&str> =
            file.symbols().filter(|s| s.is_definition()).filter_map(|s| s.name().ok()).collect();
        if defined.is_empty() {
            continue;
        }
        if wanted.iter().all(|w| defined.contains(w)) {
            return Some(true);
        }
        told = Some(false);
    }
    told
}

/// Linked executables and libraries of the original build, with their bytes.
pub fn linked_files(root: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let (_, linked) = elf_files(root)?;
    linked
        .into_iter()
        .map(|(rel, path)| Ok((rel, std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?)))
        .collect()
}
