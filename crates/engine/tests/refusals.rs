//! Every refusal leaves the process byte-for-byte as it was, and running.

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, EngineError};
use std::time::Duration;

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(5), ..Default::default() }
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
    // TLS descriptors: a relocation kind the linker refuses, with the reason.
    s.dir.gcc(&["-c", "-fPIC", "-O2", "-mtls-dialect=gnu2", "tls.c"]);
    let pkg = s.publisher.package(&s.svc, &s.dir.path("tls.o"), &["check=check_v2"], 1);
    let err = refused(&s, &pkg);
    assert!(matches!(err, EngineError::Link(_)), "{err}");
    assert!(err.to_string().contains("TLSDESC"), "{err}");
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

/// Before it says it is ready, fills every free address within ±2 GiB of its
/// executable with PROT_NONE reservations (no memory, only address space).
const CROWDED: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
int counter = 41;
__attribute__((noinline)) int check(int x) { return x + counter; }
extern char __executable_start, _end;
static unsigned long starts[8192], ends[8192];
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("starting\n");
    const unsigned long reach = 1UL << 31, page = 4096;
    unsigned long lo = (unsigned long)&__executable_start, hi = (unsigned long)&_end;
    unsigned long from = lo > reach + 0x10000 ? (lo - reach) & ~(page - 1) : 0x10000;
    unsigned long to = (hi + reach + page - 1) & ~(page - 1);
    int n = 0;
    char line[512];
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) { printf("FAIL maps\n"); return 3; }
    while (n < 8192 && fgets(line, sizeof line, f)) if (sscanf(line, "%lx-%lx", &starts[n], &ends[n]) == 2) n++;
    fclose(f);
    unsigned long cursor = from;
    for (int i = 0; i <= n && cursor < to; i++) {
        unsigned long s = i < n && starts[i] < to ? starts[i] : to;
        if (s > cursor) {
            void *p = mmap((void *)cursor, s - cursor, PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
            if (p != (void *)cursor) { printf("FAIL mmap %lx-%lx\n", cursor, s); return 3; }
        }
        if (i < n && ends[i] > cursor) cursor = ends[i];
    }
    printf("filled\n");
    for (;;) { printf("%d\n", check(1)); usleep(5000); }
}
"#;

fn no_room(pie: bool) {
    let dir = Dir::new();
    dir.write("crowded.c", CROWDED);
    dir.write("fix_v2.c", FIX_V2);
    let mut args = vec!["-O1", "-o", "crowded", "crowded.c"];
    if !pie {
        args.insert(0, "-no-pie");
    }
    dir.gcc(&args);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix_v2.c"]);
    let publisher = Publisher::new();
    let pkg = publisher.package(&dir.path("crowded"), &dir.path("fix_v2.o"), &["check=check_v2"], 1);
    let proc = Proc::spawn(&dir.path("crowded"), &[]);
    proc.expect_line("filled", 10);
    proc.expect_line("42", 10);
    let before = snapshot(proc.pid());
    let err = hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect_err("no room");
    assert!(matches!(err, EngineError::NoRoom { .. }), "{err:?}");
    assert!(err.to_string().contains("no room for a") && err.to_string().contains("crowded"), "{err}");
    assert_eq!(snapshot(proc.pid()), before, "refusal changed the process: {err}");
    assert_no_thread_traced(proc.pid());
    proc.expect_line("42", 100);
}

#[test]
fn no_room_for_the_region_within_reach_of_a_pie_executable() {
    no_room(true);
}

#[test]
fn no_room_for_the_region_within_reach_of_a_non_pie_executable() {
    no_room(false);
}
