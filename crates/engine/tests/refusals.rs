//! Every refusal leaves the process byte-for-byte as it was, and running.

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, EngineError};
use std::time::Duration;

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(5) }
}

struct Setup {
    dir: Dir,
    publisher: Publisher,
    svc: std::path::PathBuf,
    v2: std::path::PathBuf,
    proc: Proc,
}

fn setup() -> Setup {
    let dir = Dir::new();
    let (svc, v2, _) = build_svc(&dir, true);
    let proc = Proc::spawn(&svc, &[]);
    proc.expect_line("42", 100);
    Setup { dir, publisher: Publisher::new(), svc, v2, proc }
}

fn refused(s: &Setup, pkg: &hotpatch_format::VerifiedPackage) -> EngineError {
    let before = snapshot(s.proc.pid());
    let err = hotpatch_engine::apply(s.proc.pid(), pkg, &opts()).expect_err("must be refused");
    assert_eq!(snapshot(s.proc.pid()), before, "refusal changed the process: {err}");
    s.proc.expect_line("42", 100);
    err
}

#[test]
fn no_mapping_with_that_build_id() {
    let s = setup();
    s.dir.write("other.c", "int counter = 1; __attribute__((noinline)) int check(int x){return x+counter;} int main(void){return check(0);}\n");
    s.dir.gcc(&["-O1", "-o", "other", "other.c"]);
    let pkg = s.publisher.package(&s.dir.path("other"), &s.v2, &["check=check_v2"], 1);
    let err = refused(&s, &pkg);
    assert!(matches!(err, EngineError::TargetNotMapped { .. }), "{err}");
    assert!(err.to_string().contains(&pkg.manifest.target.build_id));
}

#[test]
fn site_bytes_not_as_expected() {
    let s = setup();
    let mut m = s.publisher.manifest(&s.svc, &s.v2, &["check=check_v2"], 1);
    m.functions[0].original_sha256 = "ab".repeat(32);
    let err = refused(&s, &s.publisher.sign(m, &s.v2));
    assert!(matches!(err, EngineError::SiteMismatch { .. }), "{err}");
    assert!(err.to_string().contains("do not match the baseline"), "{err}");
}

#[test]
fn symbol_not_found() {
    let s = setup();
    let mut m = s.publisher.manifest(&s.svc, &s.v2, &["check=check_v2"], 1);
    m.functions[0].symbol = "no_such_function".into();
    let err = refused(&s, &s.publisher.sign(m, &s.v2));
    assert!(err.to_string().contains("no_such_function"), "{err}");
}

#[test]
fn payload_symbol_nobody_defines() {
    let s = setup();
    s.dir.write("undef.c", "int nowhere_defined(int);\nint check_v2(int x) { return nowhere_defined(x); }\n");
    s.dir.gcc(&["-c", "-fPIC", "-O2", "undef.c"]);
    let pkg = s.publisher.package(&s.svc, &s.dir.path("undef.o"), &["check=check_v2"], 1);
    let err = refused(&s, &pkg);
    assert!(err.to_string().contains("nowhere_defined"), "{err}");
}

#[test]
fn unsupported_relocation() {
    let s = setup();
    s.dir.write("tls.c", "extern __thread int tls_counter;\nint check_v2(int x) { return x + tls_counter; }\n");
    s.dir.gcc(&["-c", "-fPIC", "-O2", "tls.c"]);
    let pkg = s.publisher.package(&s.svc, &s.dir.path("tls.o"), &["check=check_v2"], 1);
    let err = refused(&s, &pkg);
    assert!(matches!(err, EngineError::Link(_)), "{err}");
}

#[test]
fn function_too_small_for_a_jump_is_refused() {
    let s = setup();
    let mut m = s.publisher.manifest(&s.svc, &s.v2, &["check=check_v2"], 1);
    m.functions[0].size = 4;
    // The manifest itself refuses it: packages can never carry such a site.
    assert!(m.validate().is_err());
}

#[test]
fn process_that_does_not_exist() {
    let s = setup();
    let pkg = s.publisher.package(&s.svc, &s.v2, &["check=check_v2"], 1);
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id() as i32;
    gone.wait().unwrap();
    let err = hotpatch_engine::apply(pid, &pkg, &opts()).expect_err("no process");
    assert!(matches!(err, EngineError::ProcessExited(p) if p == pid), "{err}");
}

#[test]
fn rollback_with_nothing_applied() {
    let s = setup();
    let before = snapshot(s.proc.pid());
    let err = hotpatch_engine::rollback(s.proc.pid(), None, &opts()).expect_err("nothing applied");
    assert!(err.to_string().contains("no hotpatch is applied"), "{err}");
    let err = hotpatch_engine::rollback(s.proc.pid(), Some("nope"), &opts()).expect_err("unknown id");
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(snapshot(s.proc.pid()), before);
}
