//! A stripped target whose symbols only its separate debug file has, found by
//! build-id under a debug root named by `HOTPATCH_DEBUG_DIRS`.
//!
//! Its own test binary: it sets an environment variable, which must happen
//! before any other thread of the process could read the environment.

mod common;

use common::*;
use hotpatch_build::{PackRequest, manifest_for, parse_replacement};
use hotpatch_engine::{ApplyOptions, EngineError};
use hotpatch_format::Classification;
use std::path::{Path, PathBuf};

/// `secret` is file-local: once the executable is stripped, only the debug
/// file names it.
const SVC: &str = r#"
#include <stdio.h>
#include <unistd.h>
static int counter = 41;
__attribute__((noinline)) static int secret(int x) { volatile int y = x; return y + counter; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) { printf("%d\n", secret(1)); usleep(5000); }
}
"#;

fn build_id(path: &Path) -> Vec<u8> {
    let data = std::fs::read(path).expect("read");
    let elf = hotpatch_elf::TargetElf::parse(&data).expect("parse");
    elf.build_id().expect("build-id note").expect("has a build-id").to_vec()
}

fn objcopy(dir: &Dir, tool: &str, args: &[&str]) {
    let out = std::process::Command::new(tool).args(args).current_dir(dir.0.path()).output().expect(tool);
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Builds `name` from `source` with debug info and splits it: returns the
/// stripped executable and its debug file.
fn stripped(dir: &Dir, name: &str, source: &str) -> (PathBuf, PathBuf) {
    dir.write(&format!("{name}.c"), source);
    dir.gcc(&["-O1", "-g", "-o", name, &format!("{name}.c")]);
    let debug = format!("{name}.debug");
    objcopy(dir, "objcopy", &["--only-keep-debug", name, &debug]);
    objcopy(dir, "strip", &["--strip-all", name]);
    (dir.path(name), dir.path(&debug))
}

#[test]
fn static_function_named_only_by_the_debug_file_found_by_build_id() {
    let dir = Dir::new();
    let root = dir.path("debug-root");
    std::fs::create_dir(&root).expect("debug root");
    // SAFETY: first statement of the only test in this binary: no other thread
    // of this process reads the environment yet.
    unsafe { std::env::set_var(hotpatch_engine::DEBUG_DIRS_ENV, &root) };
    assert_eq!(hotpatch_engine::debug_roots()[0], root);

    let (svc, svc_debug) = stripped(&dir, "svc", SVC);
    let (_, other_debug) = stripped(&dir, "other", &SVC.replace("41", "7"));
    dir.write("fix.c", "int secret_v2(int x) { return x * 1000; }\n");
    dir.gcc(&["-c", "-fPIC", "-O2", "fix.c"]);
    let fix = dir.path("fix.o");
    assert!(!hotpatch_elf::TargetElf::parse(&std::fs::read(&svc).unwrap()).unwrap().has_symtab());

    let publisher = Publisher::new();
    let baseline = std::fs::read(&svc).expect("read baseline");
    let debug = std::fs::read(&svc_debug).expect("read debug file");
    let payload = std::fs::read(&fix).expect("read payload");
    let manifest = manifest_for(&PackRequest {
        baseline: &baseline,
        baseline_name: "svc".into(),
        debug_file: Some(&debug),
        payload: &payload,
        replacements: vec![parse_replacement("secret=secret_v2").expect("spec")],
        patch_id: Some("svc-debugfile-l1".into()),
        product: "svc".into(),
        level: 1,
        classification: Classification::Security,
        cves: vec![],
        description: "test".into(),
        created: "2026-11-29T00:00:00Z".into(),
        allow_ipa_ra: false,
    })
    .expect("manifest from the stripped baseline and its debug file");
    let pkg = publisher.sign(manifest, &fix);

    let proc = Proc::spawn(&svc, &[]);
    proc.expect_line("42", 100);
    let opts = ApplyOptions::default();
    let id = build_id(&svc);
    let placed = hotpatch_elf::debug_file_path_in(&root, &id).expect("debug file path");
    std::fs::create_dir_all(placed.parent().unwrap()).expect("build-id directory");

    // No debug file: the static function cannot be found, and nothing changes.
    let refused = |why: &str| {
        let before = snapshot(proc.pid());
        match hotpatch_engine::apply(proc.pid(), &pkg, &opts) {
            Err(EngineError::Symbol(msg)) => assert!(msg.contains("secret"), "{why}: {msg}"),
            other => panic!("{why}: expected a Symbol refusal, got {other:?}"),
        }
        assert_eq!(snapshot(proc.pid()), before, "{why}: the refusal changed the process");
    };
    refused("no debug file");
    // Another build's debug file under this build-id's name is not believed.
    std::fs::copy(&other_debug, &placed).expect("place the wrong debug file");
    refused("debug file of another build");

    std::fs::copy(&svc_debug, &placed).expect("place the debug file");
    let report = hotpatch_engine::apply(proc.pid(), &pkg, &opts).expect("apply with the debug file");
    assert_eq!(report.functions, vec!["secret"]);
    proc.expect_line("1000", 200);
    hotpatch_engine::rollback(proc.pid(), None, &opts).expect("rollback");
    proc.expect_line("42", 200);
}
