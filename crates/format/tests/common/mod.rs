//! Shared fixture for the format tests: a real baseline and a real replacement
//! object, compiled by gcc in a temporary directory, and a hand-made manifest
//! that describes them.

#![allow(dead_code)]

use hotpatch_format::{Classification, FORMAT_VERSION, FunctionPatch, Machine, Manifest, Target, sha256_hex};
use std::path::Path;
use std::process::Command;

pub const BASE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int check(int x) {
    if (x > 100) {
        return -1;
    }
    return x * 3 + 7;
}

int main(int argc, char **argv) {
    int v = argc > 1 ? atoi(argv[1]) : 1;
    printf("%d\n", check(v));
    return 0;
}
"#;

pub const FIX_C: &str = r#"
int check_v2(int x) {
    if (x > 10 || x < 0) {
        return -1;
    }
    return x * 3 + 7;
}
"#;

pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The baseline executable (`gcc -O1 -o base base.c`).
    pub base: Vec<u8>,
    /// The replacement object (`gcc -c -fPIC -O2 fix.c`).
    pub fix_o: Vec<u8>,
    /// GNU build-id of `base`, lower-case hex, as `readelf -n` reports it.
    pub build_id: String,
    /// `st_size` of `check` in `base`, as `nm -S` reports it.
    pub check_size: u64,
}

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("tool output is UTF-8")
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();
        std::fs::write(path.join("base.c"), BASE_C).unwrap();
        std::fs::write(path.join("fix.c"), FIX_C).unwrap();
        run(path, "gcc", &["-O1", "-o", "base", "base.c"]);
        run(path, "gcc", &["-c", "-fPIC", "-O2", "fix.c"]);
        let notes = run(path, "readelf", &["-n", "base"]);
        let build_id = notes
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .expect("gcc baseline has a GNU build-id")
            .trim()
            .to_owned();
        let nm = run(path, "nm", &["-S", "base"]);
        let check_size = nm
            .lines()
            .find_map(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                (parts.len() == 4 && parts[3] == "check").then(|| u64::from_str_radix(parts[1], 16).unwrap())
            })
            .expect("nm -S lists check");
        Fixture {
            base: std::fs::read(path.join("base")).unwrap(),
            fix_o: std::fs::read(path.join("fix.o")).unwrap(),
            build_id,
            check_size,
            _dir: dir,
        }
    }

    /// A valid manifest replacing `check` by `check_v2`; the hash and key id
    /// are filled in by `Package::build`.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            patch_id: "base-test-l1".into(),
            product: "base".into(),
            target: Target { build_id: self.build_id.clone(), file_name: "base".into(), machine: Machine::X86_64 },
            level: 1,
            classification: Classification::Security,
            cves: vec!["CVE-2024-12345".into()],
            description: "bounds check in check()".into(),
            created: "2025-01-02T03:04:05Z".into(),
            functions: vec![FunctionPatch {
                symbol: "check".into(),
                file: None,
                size: self.check_size,
                original_sha256: sha256_hex(b"original bytes of check"),
                replacement: "check_v2".into(),
                address: None,
            }],
            symbols: Vec::new(),
            payload_sha256: String::new(),
            signing_key_id: String::new(),
        }
    }
}
