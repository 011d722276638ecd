//! Which functions a source fix touches, for `--explain`: the C function
//! definition enclosing each changed line of the fixed file.
//!
//! This is a reading aid, not a safety input: what goes into the patch is
//! decided by comparing the compiled code alone.

use anyhow::Context;
use hotpatch_build::AsmChange;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One hunk of a unified diff.
struct Hunk {
    old_start: u64,
    old_len: u64,
    new_len: u64,
    /// New-side line numbers of its added lines, and of where lines were removed.
    changed: Vec<usize>,
    /// Those of them whose text mentions inline assembly.
    asm: Vec<usize>,
}

/// The hunks of a unified diff, per file (`+++ b/FILE`, as `-p1` reads it).
/// A hunk's body is as long as its header says, so file headers and any
/// text between hunks are never taken for changed lines.
fn parse_diff(diff: &str) -> Vec<(String, Vec<Hunk>)> {
    let mut out: Vec<(String, Vec<Hunk>)> = Vec::new();
    let (mut line, mut old_left, mut new_left) = (0usize, 0u64, 0u64);
    for text in diff.lines() {
        let in_body = old_left > 0 || new_left > 0;
        if !in_body && let Some(name) = text.strip_prefix("+++ ") {
            let name = name.split('\t').next().unwrap_or("").trim();
            out.push((name.split_once('/').map_or(name, |(_, rest)| rest).to_owned(), Vec::new()));
        } else if !in_body
            && let Some(header) = text.strip_prefix("@@ ")
            && let Some(last) = out.last_mut()
        {
            let range = |sign: char| -> (u64, u64) {
                let w = header.split_whitespace().find(|w| w.starts_with(sign)).unwrap_or("");
                let mut parts = w[1.min(w.len())..].split(',');
                let start = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let len = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
                (start, len)
            };
            let ((old_start, old_len), (new_start, new_len)) = (range('-'), range('+'));
            (line, old_left, new_left) = (new_start as usize, old_len, new_len);
            last.1.push(Hunk { old_start, old_len, new_len, changed: Vec::new(), asm: Vec::new() });
        } else if in_body && let Some(hunk) = out.last_mut().and_then(|(_, h)| h.last_mut()) {
            if matches!(text.as_bytes().first(), Some(b'+' | b'-')) && mentions_asm(&text[1..]) {
                hunk.asm.push(line);
            }
            match text.as_bytes().first() {
                Some(b'+') => {
                    hunk.changed.push(line);
                    (line, new_left) = (line + 1, new_left.saturating_sub(1));
                }
                Some(b'-') => {
                    hunk.changed.push(line);
                    old_left = old_left.saturating_sub(1);
                }
                Some(b'\\') => {} // "\ No newline at end of file"
                _ => {
                    (line, old_left, new_left) = (line + 1, old_left.saturating_sub(1), new_left.saturating_sub(1));
                }
            }
        }
    }
    out
}

/// Changed lines of the new side of a unified diff, per file.
fn changed_lines(diff: &str) -> Vec<(String, Vec<usize>)> {
    parse_diff(diff)
        .into_iter()
        .map(|(file, hunks)| (file, hunks.into_iter().flat_map(|h| h.changed).collect()))
        .collect()
}

/// The name of the function whose definition encloses line `at` (1-based):
/// the nearest line above it that starts at column 0 with what looks like a
/// declarator `NAME (`, before any line that closes a body at column 0.
fn enclosing_function(lines: &[&str], at: usize) -> Option<String> {
    for i in (0..at.min(lines.len())).rev() {
        let text = lines[i];
        if text.starts_with('}') && i + 1 < at {
            return None;
        }
        let Some(first) = text.chars().next() else { continue };
        if !(first.is_ascii_alphabetic() || first == '_') || text.ends_with(';') {
            continue;
        }
        if let Some(open) = text.find('(') {
            let name: String = text[..open]
                .trim_end()
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if !name.is_empty() && !matches!(name.as_str(), "if" | "for" | "while" | "switch" | "return" | "sizeof") {
                return Some(name);
            }
        }
    }
    None
}

/// The source diffs to read: the patches as written, or (when both trees
/// are at hand) what they changed, measured with `diff` so that line numbers
/// are the tree's own (a Debian patch often applies at an offset).
pub fn source_diffs(patches: &[PathBuf], trees: Option<(&Path, &Path)>) -> anyhow::Result<Vec<String>> {
    let texts: Vec<String> = patches
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display())))
        .collect::<Result<_, _>>()?;
    let Some((old, new)) = trees else { return Ok(texts) };
    let files: BTreeSet<String> = texts.iter().flat_map(|t| changed_lines(t).into_iter().map(|(f, _)| f)).collect();
    let mut measured = String::new();
    for file in files {
        let out = std::process::Command::new("diff")
            .args(["-U0", "--"])
            .arg(old.join(&file))
            .arg(new.join(&file))
            .output()
            .context("cannot run diff (Debian's diffutils)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        measured.push_str(&format!("+++ b/{file}\n"));
        for line in text.lines().filter(|l| !l.starts_with("--- ") && !l.starts_with("+++ ")) {
            measured.push_str(line);
            measured.push('\n');
        }
    }
    Ok(vec![measured])
}

/// Whether a line of C uses the `asm` keyword (any spelling gcc and clang take).
fn mentions_asm(line: &str) -> bool {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|w| matches!(w, "asm" | "__asm" | "__asm__"))
}

/// Every added or removed line of inline assembly, with the function that
/// holds it in the fixed tree (none for assembly at file scope).
pub fn asm_changes(diffs: &[String], fixed_tree: &Path) -> Vec<AsmChange> {
    let mut out = Vec::new();
    for diff in diffs {
        for (file, hunks) in parse_diff(diff) {
            let source = std::fs::read_to_string(fixed_tree.join(&file)).unwrap_or_default();
            let text: Vec<&str> = source.lines().collect();
            let name = file.rsplit('/').next().unwrap_or(&file).to_owned();
            for line in hunks.iter().flat_map(|h| h.asm.iter().copied()) {
                let function = enclosing_function(&text, line);
                out.push(AsmChange { file: name.clone(), line, function });
            }
        }
    }
    out
}

pub fn functions_in(diffs: &[String], fixed_tree: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for diff in diffs {
        for (file, lines) in changed_lines(diff) {
            let Ok(source) = std::fs::read_to_string(fixed_tree.join(&file)) else { continue };
            let text: Vec<&str> = source.lines().collect();
            names.extend(lines.iter().filter_map(|&l| enclosing_function(&text, l)));
        }
    }
    names
}

/// Per file name (the last path component), where each patch's hunks move
/// the lines that follow them: `(last old line of the hunk, cumulative shift)`.
/// Patches apply in order, so a later patch's old lines are the earlier
/// patch's new ones; the shifts are composed to map baseline lines.
pub fn line_shifts(diffs: &[String]) -> BTreeMap<String, Vec<(u64, i64)>> {
    let mut out: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
    for diff in diffs {
        for (file, hunks) in hunk_shifts(diff) {
            let name = file.rsplit('/').next().unwrap_or(&file).to_owned();
            let earlier = out.remove(&name).unwrap_or_default();
            out.insert(name, compose(&earlier, &hunks));
        }
    }
    out
}

/// `(old end line, lines added minus removed)` of each hunk, per file.
fn hunk_shifts(diff: &str) -> Vec<(String, Vec<(u64, i64)>)> {
    parse_diff(diff)
        .into_iter()
        .map(|(file, hunks)| {
            let shifts = hunks
                .iter()
                .map(|h| (h.old_start + h.old_len.saturating_sub(1), h.new_len as i64 - h.old_len as i64))
                .collect();
            (file, shifts)
        })
        .collect()
}

/// Composes the shifts of an earlier patch with a later one's hunks (whose
/// lines are in the earlier patch's numbering), as cumulative shifts of
/// baseline lines.
fn compose(earlier: &[(u64, i64)], later: &[(u64, i64)]) -> Vec<(u64, i64)> {
    let shift_of = |shifts: &[(u64, i64)], line: u64| -> i64 {
        shifts.iter().take_while(|(after, _)| *after < line).last().map_or(0, |(_, d)| *d)
    };
    let mut later_cumulative = Vec::new();
    let mut sum = 0;
    for (after, delta) in later {
        sum += delta;
        later_cumulative.push((*after, sum));
    }
    // Every point where either patch changes the shift, in baseline lines.
    let mut points: Vec<u64> = earlier.iter().map(|(a, _)| *a).collect();
    for (after, _) in &later_cumulative {
        // The baseline line that became `after` in the earlier patch's numbering.
        let back = (*after as i64 - shift_of(earlier, *after)).max(0) as u64;
        points.push(back);
    }
    points.sort_unstable();
    points.dedup();
    points
        .into_iter()
        .map(|p| {
            let first = shift_of(earlier, p + 1);
            let moved = (p as i64 + 1 + first).max(0) as u64;
            (p, first + shift_of(&later_cumulative, moved))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_enclosing_definition() {
        let src = "static int\nparse (const char *s, int n)\n{\n  if (n > 4)\n    return 1;\n\n  return 0;\n}\n";
        let lines: Vec<&str> = src.lines().collect();
        assert_eq!(enclosing_function(&lines, 4).as_deref(), Some("parse"));
        assert_eq!(enclosing_function(&lines, 7).as_deref(), Some("parse"), "past a blank line");
        assert_eq!(enclosing_function(&lines, 9), None);
    }

    #[test]
    fn line_shifts_accumulate_and_compose() {
        let diff = "+++ b/x.c\n@@ -3,2 +3,3 @@\n ctx\n+added\n ctx\n@@ -20,3 +21,1 @@\n";
        let hunks = hunk_shifts(diff);
        assert_eq!(hunks, vec![("x.c".to_owned(), vec![(4, 1), (22, -2)])]);
        let single = compose(&[], &hunks[0].1);
        assert_eq!(single, vec![(4, 1), (22, -1)]);
        // A second patch adding 2 lines after (its) line 10 = baseline line 9.
        let both = compose(&single, &[(10, 2)]);
        let shift = |l: u64| both.iter().take_while(|(a, _)| *a < l).last().map_or(0, |(_, d)| *d);
        assert_eq!((shift(3), shift(5), shift(10), shift(30)), (0, 1, 3, 1));
    }

    #[test]
    fn file_headers_are_not_changed_lines() {
        let diff =
            "--- a/x.c\n+++ b/x.c\n@@ -3,1 +3,2 @@\n ctx\n+added\n--- a/y.c\n+++ b/y.c\n@@ -9 +9 @@\n-old\n+new\n";
        assert_eq!(changed_lines(diff), vec![("x.c".to_owned(), vec![4]), ("y.c".to_owned(), vec![9, 9])]);
    }

    #[test]
    fn finds_inline_assembly_added_or_removed() {
        let diff = "+++ b/x.c\n@@ -3,2 +3,2 @@\n ctx\n-    __asm__ volatile(\"pause\");\n+    asm(\"nop\");\n@@ -9 +9 @@\n-int asmx;\n+int basm;\n";
        let hunks = parse_diff(diff);
        assert_eq!(hunks[0].1[0].asm, vec![4, 4]);
        assert!(hunks[0].1[1].asm.is_empty(), "identifiers that contain 'asm' are not the keyword");
    }

    #[test]
    fn reads_new_side_line_numbers() {
        let diff = "--- a/x.c\n+++ b/x.c\n@@ -3,2 +3,3 @@\n ctx\n+added\n ctx\n";
        assert_eq!(changed_lines(diff), vec![("x.c".to_owned(), vec![4])]);
    }
}
