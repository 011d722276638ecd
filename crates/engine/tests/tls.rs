//! Replacement code reading and writing the process's own thread-local
//! variables, in every access model gcc emits, each thread seeing its own.

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, EngineError};
use std::time::Duration;

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(10), ..Default::default() }
}

/// Two threads with different values in the same TLS variables; each
/// prints what `check` answers and what its own `tls_scratch` holds.
const TLSVC: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
__thread int tls_counter;
__thread int tls_scratch;
static __thread int tls_local = 3;
extern __thread int lib_tls;
int lib_get(void);
__attribute__((noinline)) int check(int x) { return x + tls_counter + tls_local - 3; }
static void *worker(void *a) {
    tls_counter = 1000;
    tls_local = 3; /* written, so it stays a variable (not folded to a constant) */
    lib_tls = 60;
    for (;;) { int r = check(1); printf("w %d %d\n", r, tls_scratch); usleep(5000); }
    return a;
}
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    tls_counter = 41;
    if (lib_get() != 50) { printf("FAIL lib_tls\n"); return 1; }
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    for (;;) { int r = check(1); printf("m %d %d\n", r, tls_scratch); usleep(5000); }
}
"#;

/// The library uses its own variable (so the dynamic linker writes its
/// module id into the library's GOT).
const LIB: &str = "__thread int lib_tls = 50;\nint lib_get(void) { return lib_tls; }\n";

/// Reads two variables of the executable (one of them file-local) and writes a third.
const FIX_EXE: &str = r#"
extern __thread int tls_counter, tls_scratch, tls_local;
int check_v2(int x) { tls_scratch = 7; return x + tls_counter * 2 + tls_local - 3; }
"#;

/// Reads the library's variable.
const FIX_LIB: &str = "extern __thread int lib_tls;\nint check_v3(int x) { return x + lib_tls; }\n";

struct Fixture {
    dir: Dir,
    publisher: Publisher,
}

impl Fixture {
    fn build() -> Fixture {
        let dir = Dir::new();
        dir.write("tlsvc.c", TLSVC);
        dir.write("lib.c", LIB);
        dir.write("fix_exe.c", FIX_EXE);
        dir.write("fix_lib.c", FIX_LIB);
        dir.gcc(&["-O1", "-shared", "-fPIC", "-o", "libtlsdemo.so", "lib.c"]);
        dir.gcc(&["-O1", "-pthread", "-o", "tlsvc", "tlsvc.c", "-L.", "-ltlsdemo"]);
        Fixture { dir, publisher: Publisher::new() }
    }

    /// The payload `fix` built with one TLS access model.
    fn package(&self, fix: &str, model: &str, replace: &str) -> hotpatch_format::VerifiedPackage {
        let obj = format!("{fix}-{model}.o");
        self.dir.gcc(&["-c", "-fPIC", "-O2", &format!("-ftls-model={model}"), &format!("{fix}.c"), "-o", &obj]);
        self.publisher.package(&self.dir.path("tlsvc"), &self.dir.path(&obj), &[replace], 1)
    }

    fn spawn(&self) -> Proc {
        let libdir = self.dir.0.path().to_string_lossy().into_owned();
        let proc = Proc::spawn(&self.dir.path("tlsvc"), &[("LD_LIBRARY_PATH", &libdir)]);
        proc.expect_line("m 42 0", 100);
        proc.expect_line("w 1001 0", 100);
        proc
    }
}

#[test]
fn replacement_uses_the_executables_tls_in_every_model() {
    let f = Fixture::build();
    let proc = f.spawn();
    for model in ["global-dynamic", "initial-exec", "local-exec", "local-dynamic"] {
        let pkg = f.package("fix_exe", model, "check=check_v2");
        hotpatch_engine::apply(proc.pid(), &pkg, &opts()).unwrap_or_else(|e| panic!("{model}: {e}"));
        // Each thread reads its own tls_counter and writes its own tls_scratch.
        proc.expect_line("m 83 7", 200);
        proc.expect_line("w 2001 7", 200);
        hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
        proc.expect_line("m 42 7", 200);
        proc.expect_line("w 1001 7", 200);
    }
}

#[test]
fn replacement_uses_a_librarys_tls_through_tls_get_addr() {
    let f = Fixture::build();
    let proc = f.spawn();
    let pkg = f.package("fix_lib", "global-dynamic", "check=check_v3");
    hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply");
    proc.expect_line("m 51 0", 200);
    proc.expect_line("w 61 0", 200);
    hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
    proc.expect_line("m 42 0", 200);
}

#[test]
fn initial_exec_of_a_library_variable_without_a_known_offset_is_refused() {
    let f = Fixture::build();
    let proc = f.spawn();
    let pkg = f.package("fix_lib", "initial-exec", "check=check_v3");
    let before = snapshot(proc.pid());
    let err = hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, EngineError::Link(_)), "{err:?}");
    assert!(text.contains("lib_tls") && text.contains("-ftls-model=global-dynamic"), "{text}");
    assert_eq!(snapshot(proc.pid()), before, "a refusal changed the process");
}

#[test]
fn unknown_tls_variable_is_refused_by_name() {
    let f = Fixture::build();
    let proc = f.spawn();
    f.dir.write("fix_none.c", "extern __thread int nowhere_tls;\nint check_v2(int x) { return x + nowhere_tls; }\n");
    let pkg = f.package("fix_none", "global-dynamic", "check=check_v2");
    let err = hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect_err("refused");
    assert!(err.to_string().contains("nowhere_tls"), "{err}");
}
