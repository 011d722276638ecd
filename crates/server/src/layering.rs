//! The server's layering, checked from its own sources so that an import circle
//! between handlers cannot come back unnoticed: http (`api/`, `web/`) -> domain
//! -> store. An `api/` module may use the shared request plumbing (`json`,
//! `access`) but no sibling handler module; a domain module uses neither `api`
//! nor `web`.

use std::path::{Path, PathBuf};

/// The `api/` modules every handler may use: request/response plumbing.
const API_PLUMBING: [&str; 2] = ["json", "access"];

/// Modules outside `domain/` that hold rules too, and so obey the same rule.
const DOMAIN_FILES_OUTSIDE: [&str; 4] = ["tiers/mod.rs", "tiers/change.rs", "offer.rs", "windows.rs"];

/// What a domain module must never name.
const HTTP_PATHS: [&str; 6] = [
    "crate::api",
    "crate::web",
    "super::super::api",
    "super::super::web",
    "hotpatch_server::api",
    "hotpatch_server::web",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The source without line comments, so a doc comment naming a module is no import.
fn code_of(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The first path segment after each `prefix` (`super::deploy::X` gives `deploy`;
/// `super::{json::ApiJson, checkin}` gives `json` and `checkin`).
fn modules_after(code: &str, prefix: &str) -> Vec<String> {
    let ident = |s: &str| s.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or("");
                out.extend(group.split(',').map(ident).filter(|m| !m.is_empty()));
            }
            None => out.push(ident(rest)),
        }
    }
    out
}

/// The sibling handler modules that the `api/` module `name` imports.
fn sibling_imports(name: &str, code: &str, siblings: &[String]) -> Vec<String> {
    ["super::", "crate::api::", "hotpatch_server::api::"]
        .iter()
        .flat_map(|p| modules_after(code, p))
        .filter(|m| m != name && siblings.contains(m) && !API_PLUMBING.contains(&m.as_str()))
        .collect()
}

#[test]
fn api_handlers_import_no_sibling_handler() {
    let files: Vec<PathBuf> = rust_files(&src().join("api")).into_iter().filter(|p| stem(p) != "mod").collect();
    assert!(files.len() >= 10, "the api/ modules were not found under {}", src().display());
    let siblings: Vec<String> = files.iter().map(|p| stem(p)).collect();
    let mut found = Vec::new();
    for f in &files {
        let code = code_of(&std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        for m in sibling_imports(&stem(f), &code, &siblings) {
            found.push(format!("api/{}.rs uses api::{m}", stem(f)));
        }
    }
    assert!(found.is_empty(), "handlers must share rules through domain/, not each other:\n{}", found.join("\n"));
}

#[test]
fn domain_modules_import_neither_api_nor_web() {
    let mut files = rust_files(&src().join("domain"));
    assert!(files.len() >= 8, "the domain/ modules were not found under {}", src().display());
    files.extend(DOMAIN_FILES_OUTSIDE.iter().map(|f| src().join(f)));
    let mut found = Vec::new();
    for f in &files {
        let code = code_of(&std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        found.extend(HTTP_PATHS.iter().filter(|p| code.contains(**p)).map(|p| format!("{} uses {p}", f.display())));
    }
    assert!(found.is_empty(), "domain modules must not depend on the http layer:\n{}", found.join("\n"));
}

#[test]
fn every_form_of_a_sibling_import_is_seen_and_comments_are_not() {
    let siblings: Vec<String> = ["deploy", "checkin", "json", "access", "billing"].map(String::from).to_vec();
    let code = code_of(
        "use super::deploy::{Deployment, Kind};\n\
         use super::{json::ApiJson, checkin};\n\
         let e = crate::api::billing::entitled(st).await?;\n\
         // super::billing is only mentioned here\n\
         use super::access::check_name;\n\
         let limit = super::JSON_BODY_LIMIT;\n\
         mod tests { use super::*; }",
    );
    assert_eq!(sibling_imports("catalog", &code, &siblings), ["deploy", "checkin", "billing"]);
    assert!(sibling_imports("deploy", "use super::deploy::Kind;", &siblings).is_empty());
    assert!(HTTP_PATHS.iter().any(|p| code_of("use crate::api::deploy::Kind;").contains(p)));
    assert!(!HTTP_PATHS.iter().any(|p| code_of("/// unlike [`crate::api::deploy`]").contains(p)));
}

#[test]
fn web_pages_write_no_markup_by_hand() {
    let files = rust_files(&src().join("web"));
    assert!(files.len() >= 10, "the web/ modules were not found under {}", src().display());
    let mut found = Vec::new();
    for f in files.iter().filter(|f| stem(f) != "view") {
        let code = code_of(&std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        // `PreEscaped` writes a value unescaped; `format!("<` builds markup outside a template.
        for needle in ["PreEscaped", "format!(\"<", "push_str(\"<"] {
            if code.contains(needle) {
                found.push(format!("web/{}.rs uses {needle}", stem(f)));
            }
        }
    }
    assert!(found.is_empty(), "pages are maud templates (view.rs); markup by hand:\n{}", found.join("\n"));
}
