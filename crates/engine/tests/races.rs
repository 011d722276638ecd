//! The engine racing the process it patches: threads created and ending
//! while every thread is being stopped, and processes that exit in the middle
//! of an apply or a rollback.

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, EngineError};
use std::time::Duration;

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(10) }
}

/// Two threads create short-lived detached threads as fast as they can; each
/// one calls the function being patched and ends.
const CHURN: &str = r#"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int counter = 41;
__attribute__((noinline)) int check(int x) { return x + counter; }
static volatile int sink;
static void *worker(void *a) { sink = check((int)(long)a); return 0; }
static void spawn_forever(int report) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (unsigned long n = 1;; n++) {
        pthread_t t;
        int e = pthread_create(&t, &attr, worker, (void *)1);
        if (e == EAGAIN) { usleep(200); continue; }
        if (e) { printf("FAIL pthread_create %d\n", e); exit(3); }
        if (n % 128 == 0) {
            if (report) printf("%d\n", check(1));
            usleep(1000);
        }
    }
}
static void *spawner(void *a) { spawn_forever(0); return 0; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t;
    pthread_create(&t, 0, spawner, 0);
    spawn_forever(1);
}
"#;

#[test]
fn threads_created_and_ending_while_the_engine_stops_the_process() {
    let dir = Dir::new();
    dir.write("churn.c", CHURN);
    dir.write("fix_v2.c", FIX_V2);
    dir.gcc(&["-O1", "-pthread", "-o", "churn", "churn.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix_v2.c"]);
    let publisher = Publisher::new();
    let pkg = publisher.package(&dir.path("churn"), &dir.path("fix_v2.o"), &["check=check_v2"], 1);
    let mut proc = Proc::spawn(&dir.path("churn"), &[]);
    proc.expect_line("42", 100);
    let pid = proc.pid();
    let mut applied = 0;
    for round in 0..6 {
        match hotpatch_engine::apply(pid, &pkg, &opts()) {
            Ok(report) => {
                applied += 1;
                assert!(report.threads >= 2, "round {round}: {report:?}");
                assert_no_thread_traced(pid);
                proc.expect_line("83", 2000);
                match hotpatch_engine::rollback(pid, None, &opts()) {
                    Ok(_) => proc.expect_line("42", 2000),
                    Err(e) => panic!("round {round}: rollback failed: {e}"),
                }
            }
            // Every thread found in the short-lived function for the whole timeout:
            // refused cleanly, nothing of the patch left in the process.
            Err(EngineError::Busy { .. }) => assert_eq!(region_count(pid), 0),
            Err(e) => panic!("round {round}: apply failed: {e}"),
        }
        assert_no_thread_traced(pid);
        assert_eq!(region_count(pid), 0, "round {round}");
        assert!(proc.alive(), "round {round}: the process died");
    }
    assert!(applied > 0, "never applied in 6 rounds");
    proc.expect_line("42", 2000);
}
