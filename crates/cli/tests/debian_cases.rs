//! Real distribution code (tests/debian/*/): a CVE fix from a Debian source
//! package's debian/patches, built by `hotpatch build` for the library the
//! archive installed, applied to a running process, behaviour checked, rolled
//! back. Each case is `scripts/debian-case NAME`; this runs the cases named
//! in `HOTPATCH_DEBIAN_CASES` (comma-separated, or `all`). `scripts/test`
//! runs `expat` by default; the others are the slower tier.

use std::path::Path;
use std::process::Command;

fn cases() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/debian");
    let wanted = std::env::var("HOTPATCH_DEBIAN_CASES").unwrap_or_default();
    if wanted == "all" {
        let mut all: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| root.join(n).join("case.conf").is_file())
            .collect();
        all.sort();
        return all;
    }
    wanted.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

#[test]
fn debian_cve_fixes_patch_running_processes() {
    let cases = cases();
    if cases.is_empty() {
        eprintln!("no Debian case asked for (HOTPATCH_DEBIAN_CASES); scripts/test runs expat");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/debian-case");
    let mut failed = Vec::new();
    for name in &cases {
        let status = Command::new("bash")
            .arg(&script)
            .arg(name)
            .env("HOTPATCH", env!("CARGO_BIN_EXE_hotpatch"))
            .status()
            .expect("run scripts/debian-case");
        if !status.success() {
            failed.push(name.clone());
        }
    }
    assert!(failed.is_empty(), "Debian cases failed: {failed:?}");
}
