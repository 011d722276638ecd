//! Unwinding through replacement code: the stack check reads each patch
//! region's own `.eh_frame` (its header says where), so a thread parked
//! inside level-1 replacement code is unwound exactly, and a rollback waits
//! for that frame to return (a return breakpoint) instead of retrying at
//! random moments with a conservative scan of the stack.

mod common;

use common::*;
use hotpatch_engine::ApplyOptions;
use std::time::Duration;

/// `main` calls `check(1)` in a loop and prints the answer; `check` sleeps
/// 20 ms, so the thread is inside it nearly all the time.
const BUSY: &str = r#"
#include <stdio.h>
#include <unistd.h>
int counter = 41;
__attribute__((noinline)) int check(int x) {
    usleep(20000);
    return x + counter;
}
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) printf("%d\n", check(1));
}
"#;

/// The replacement sleeps the same way: a thread is nearly always inside it,
/// below a frame of its own (not a leaf, whose return address any unwinder
/// would guess from the stack pointer).
const FIX: &str = r#"
#include <unistd.h>
int check_v2(int x) {
    usleep(20000);
    return 1000 + x;
}
"#;

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(20), ..Default::default() }
}

#[test]
fn a_rollback_waits_for_a_frame_inside_replacement_code_to_return() {
    let dir = Dir::new();
    dir.write("busy.c", BUSY);
    dir.write("fix.c", FIX);
    dir.gcc(&["-O1", "-o", "busy", "busy.c"]);
    dir.gcc(&["-c", "-fPIC", "-O1", "fix.c"]);
    let pkg = Publisher::new().package(&dir.path("busy"), &dir.path("fix.o"), &["check=check_v2"], 1);
    let proc = Proc::spawn(&dir.path("busy"), &[]);
    proc.expect_line("42", 100);
    hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply while busy in the original");
    proc.expect_line("1001", 100);

    let report = hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback while busy in the replacement");
    assert!(report.retries >= 1, "the first stop should have found the replacement busy: {report:?}");
    // Waited for the frame to return, not retried until a stop found the
    // thread outside by chance (without the region's unwind tables: ~100
    // retries over seconds).
    assert!(report.retries <= 2, "{report:?}");
    proc.expect_line("42", 5000);
    assert_no_thread_traced(proc.pid());
}
