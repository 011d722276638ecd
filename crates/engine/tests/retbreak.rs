//! Return breakpoints: a function some thread is nearly always inside is
//! patched by waiting for the busy frame to return, not by luck.

mod common;

use common::*;
use hotpatch_engine::ApplyOptions;
use std::time::Duration;

/// The main thread calls `check(2)` in a loop and prints what it returns;
/// `check` recurses twice (a recursive frame returns into `check` itself,
/// only the outermost into `main`), then spins for tens of milliseconds, so
/// the thread is inside `check` all but a sliver of the time. A second
/// thread loops through the same code: two threads busy in it at once.
const NEARLY_ALWAYS_BUSY: &str = r#"
#include <pthread.h>
#include <stdio.h>
int counter = 41;
__attribute__((noinline)) int check(int x) {
    if (x > 0) {
        int r = check(x - 1);
        __asm__ volatile("" : "+r"(r));
        return r + 1;
    }
    volatile unsigned long s = 0;
    for (unsigned long i = 0; i < 20000000UL; i++) s += i;
    return counter;
}
static void *again(void *a) { for (;;) check(1); return a; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t;
    pthread_create(&t, 0, again, 0);
    for (;;) printf("%d\n", check(2));
}
"#;

/// The fix returns at once. (A rollback while a thread is inside
/// replacement code: tests/unwind_region.rs.)
const FIX: &str = "int check_v2(int x) { return x; }\n";

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(20), ..Default::default() }
}

#[test]
fn a_function_nearly_always_running_is_patched_when_its_frame_returns() {
    let dir = Dir::new();
    dir.write("busy.c", NEARLY_ALWAYS_BUSY);
    dir.write("fix.c", FIX);
    dir.gcc(&["-O1", "-pthread", "-o", "busy", "busy.c"]);
    dir.gcc(&["-c", "-fPIC", "-O1", "fix.c"]);
    let pkg = Publisher::new().package(&dir.path("busy"), &dir.path("fix.o"), &["check=check_v2"], 1);
    let mut proc = Proc::spawn(&dir.path("busy"), &[]);
    proc.expect_line("43", 100);
    for round in 0..3 {
        let report = hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply while busy");
        assert!(report.retries >= 1, "round {round}: the first stop should have found check busy: {report:?}");
        // About one wait per busy thread (two of them; typically 2), where
        // random stops took 130 to 200 attempts (or timed out).
        assert!(report.retries <= 20, "round {round}: switched by luck, not on return: {report:?}");
        proc.expect_line("2", 100);
        hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
        // The patched loop prints fast: many lines may be queued before it.
        proc.expect_line("43", 50_000_000);
        assert!(proc.alive(), "round {round}: the process died");
    }
    assert_eq!(hotpatch_engine::procfs::tracer_of(proc.pid()), Some(0), "left traced");
}
