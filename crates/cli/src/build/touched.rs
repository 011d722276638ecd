//! Which functions a source fix touches, for `--explain`: the C function
//! definition enclosing each changed line of the fixed file.
//!
//! This is a reading aid, not a safety input: what goes into the patch is
//! decided by comparing the compiled code alone.

use anyhow::Context;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Changed lines of the new side of a unified diff, per file (`+++ b/FILE`, `-p1`).
fn changed_lines(diff: &str) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut line = 0usize;
    for text in diff.lines() {
        if let Some(name) = text.strip_prefix("+++ ") {
            let name = name.split('\t').next().unwrap_or("").trim();
            let name = name.split_once('/').map_or(name, |(_, rest)| rest);
            out.push((name.to_owned(), Vec::new()));
        } else if let Some(hunk) = text.strip_prefix("@@ ") {
            let new = hunk.split_whitespace().find(|w| w.starts_with('+')).unwrap_or("+0");
            line = new[1..].split(',').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if let Some(last) = out.last_mut() {
            match text.as_bytes().first() {
                Some(b'+') => {
                    last.1.push(line);
                    line += 1;
                }
                Some(b'-') => last.1.push(line),
                _ => line += 1,
            }
        }
    }
    out
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
        let first = text.chars().next()?;
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

pub fn functions_in(patches: &[PathBuf], fixed_tree: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for patch in patches {
        let diff = std::fs::read_to_string(patch).with_context(|| format!("cannot read {}", patch.display()))?;
        for (file, lines) in changed_lines(&diff) {
            let Ok(source) = std::fs::read_to_string(fixed_tree.join(&file)) else { continue };
            let text: Vec<&str> = source.lines().collect();
            names.extend(lines.iter().filter_map(|&l| enclosing_function(&text, l)));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_enclosing_definition() {
        let src = "static int\nparse (const char *s, int n)\n{\n  if (n > 4)\n    return 1;\n  return 0;\n}\n";
        let lines: Vec<&str> = src.lines().collect();
        assert_eq!(enclosing_function(&lines, 4).as_deref(), Some("parse"));
        assert_eq!(enclosing_function(&lines, 8), None);
    }

    #[test]
    fn reads_new_side_line_numbers() {
        let diff = "--- a/x.c\n+++ b/x.c\n@@ -3,2 +3,3 @@\n ctx\n+added\n ctx\n";
        assert_eq!(changed_lines(diff), vec![("x.c".to_owned(), vec![4])]);
    }
}
