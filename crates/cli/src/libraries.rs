//! The libraries a baseline needs (`DT_NEEDED`, transitively), found where
//! the dynamic linker looks by default, and the names they export: what a
//! hand-written payload may call besides the baseline itself.

use object::read::elf::{Dyn, ElfFile64};
use object::{Endianness, Object, ObjectSymbol};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const LIBRARY_DIRS: [&str; 6] =
    ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/usr/local/lib", "/usr/lib"];

fn needed(data: &[u8]) -> Vec<String> {
    let Ok(file) = ElfFile64::<Endianness>::parse(data) else { return Vec::new() };
    let endian = file.endian();
    let sections = file.elf_section_table();
    let Ok(Some((entries, link))) = sections.dynamic(endian, data) else { return Vec::new() };
    let Ok(strings) = sections.strings(endian, data, link) else { return Vec::new() };
    entries
        .iter()
        .filter(|d| d.d_tag(endian) == u64::from(object::elf::DT_NEEDED))
        .filter_map(|d| d.string(endian, strings).ok())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn find(name: &str, beside: &Path) -> Option<PathBuf> {
    std::iter::once(beside.to_path_buf())
        .chain(LIBRARY_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Exports of every library `baseline` needs, and their names; `None` when
/// one cannot be found (then nothing can be told, and nothing is refused).
pub fn needed_exports(baseline: &[u8], baseline_path: &Path) -> Option<(BTreeSet<String>, Vec<String>)> {
    let beside = baseline_path.parent().unwrap_or(Path::new("."));
    let mut queue = needed(baseline);
    let mut seen = BTreeSet::new();
    let mut exports = BTreeSet::new();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(path) = find(&name, beside) else {
            tracing::warn!(library = %name, "needed library not found; the payload's undefined names are not checked");
            return None;
        };
        let data = std::fs::read(&path).ok()?;
        let file = object::File::parse(data.as_slice()).ok()?;
        exports.extend(
            file.dynamic_symbols().filter(|s| s.is_definition()).filter_map(|s| s.name().ok().map(str::to_owned)),
        );
        queue.extend(needed(&data));
    }
    Some((exports, seen.into_iter().collect()))
}
