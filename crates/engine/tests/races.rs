//! The engine racing the process it patches: threads created and ending
//! while every thread is being stopped, and processes that exit in the middle
//! of an apply or a rollback.

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, EngineError};
use std::time::Duration;

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(10), ..Default::default() }
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
            // The regions mapped are those retired by the rollbacks so far.
            Err(EngineError::Busy { .. }) => assert_eq!(region_count(pid), applied),
            Err(e) => panic!("round {round}: apply failed: {e}"),
        }
        assert_no_thread_traced(pid);
        assert_eq!(live_region_count(pid), 0, "round {round}");
        assert_eq!(region_count(pid), applied, "round {round}");
        assert!(proc.alive(), "round {round}: the process died");
    }
    assert!(applied > 0, "never applied in 6 rounds");
    proc.expect_line("42", 2000);
}

/// Three threads call the function being patched; the main thread prints
/// once and, with EXIT_AFTER_US set, exits that long after (else runs on).
/// With EXIT_ON_REGION=appear a thread exits as soon as it sees a patch
/// region appear in its maps: in the middle of the steps an apply takes after
/// mapping it. With EXIT_ON_REGION=restored it exits as soon as it sees the
/// site of `check` go back to the baseline: while a rollback resumes threads.
const EXITS: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int counter = 41;
__attribute__((noinline)) int check(int x) { return x + counter; }
static volatile int sink;
static void *worker(void *a) { for (;;) { sink = check(0); usleep(50); } return 0; }
static int region_mapped(void) {
    static char buf[1 << 16];
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) exit(3);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, "memfd:hotpatch:") != NULL;
}
static void *watcher(void *a) {
    if (strcmp((const char *)a, "appear") == 0) for (;;) if (region_mapped()) exit(0);
    volatile unsigned char *site = (volatile unsigned char *)check;
    while (*site != 0xe9) usleep(200);
    for (;;) if (*site != 0xe9) exit(0);
}
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < 3; i++) { pthread_t t; pthread_create(&t, 0, worker, 0); }
    const char *on_region = getenv("EXIT_ON_REGION");
    if (on_region) { pthread_t t; pthread_create(&t, 0, watcher, (void *)on_region); }
    printf("%d\n", check(1));
    const char *after = getenv("EXIT_AFTER_US");
    if (after) { usleep(atoi(after)); exit(0); }
    for (;;) { printf("%d\n", check(1)); usleep(5000); }
}
"#;

/// How a round's process ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// `exit` from the main thread while the other threads run.
    Exits,
    /// A signal from outside.
    Signal(i32),
    /// `exit` from a thread that watches for the region to appear or vanish.
    OnRegion,
}

/// Runs `op` on a thread of its own and fails the test if it does not return
/// within a generous bound (a hang is the failure this watches for).
fn within<T: Send + 'static>(what: &str, op: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(op());
    });
    rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("{what} did not return within 30 s"))
}

/// The target of one round: our own child, or (as for an agent patching a
/// service) the child of a shell that waits for it.
struct Target {
    proc: Proc,
    pid: i32,
    via_shell: bool,
}

impl Target {
    fn spawn(program: &std::path::Path, env: &[(&str, &str)], via_shell: bool) -> Target {
        if !via_shell {
            let proc = Proc::spawn(program, env);
            proc.expect_line("42", 10);
            let pid = proc.pid();
            return Target { proc, pid, via_shell };
        }
        let script = format!("'{}' & echo pid $!; wait", program.display());
        let proc = Proc::spawn_args(std::path::Path::new("/bin/sh"), &["-c", &script], env);
        let (mut pid, mut ready) = (None, false);
        while pid.is_none() || !ready {
            let line = proc.drain_one().expect("target went silent");
            match line.strip_prefix("pid ") {
                Some(p) => pid = p.parse().ok(),
                None => ready |= line == "42",
            }
        }
        Target { proc, pid: pid.unwrap_or_default(), via_shell }
    }

    /// Waits (bounded) until the process has ended and is reaped by its
    /// parent: a thread left traced by the engine would keep it a zombie.
    fn reaped(&mut self, what: &str) {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < end {
            let gone = if self.via_shell {
                !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
            } else {
                !matches!(self.proc.child.try_wait(), Ok(None))
            };
            if gone {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("{what}: process {} never ended or could not be reaped", self.pid);
    }
}

#[test]
fn process_that_exits_in_the_middle_of_apply_or_rollback() {
    let dir = Dir::new();
    dir.write("exits.c", EXITS);
    dir.write("fix_v2.c", FIX_V2);
    dir.gcc(&["-O1", "-pthread", "-o", "exits", "exits.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix_v2.c"]);
    let publisher = Publisher::new();
    let pkg = std::sync::Arc::new(publisher.package(&dir.path("exits"), &dir.path("fix_v2.o"), &["check=check_v2"], 1));
    let endings = [Ending::Exits, Ending::Signal(libc::SIGKILL), Ending::Signal(libc::SIGTERM), Ending::OnRegion];
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..80u64 {
        let ending = endings[(round % 4) as usize];
        let rolling_back = (round / 4) % 2 == 1;
        let via_shell = (round / 8) % 2 == 1;
        // Spread over the few milliseconds an apply or a rollback takes.
        let delay_us = (round / 8) * 1000 + (round % 8) * 120;
        let delay = delay_us.to_string();
        let env: Vec<(&str, &str)> = match ending {
            Ending::Exits if !rolling_back => vec![("EXIT_AFTER_US", delay.as_str())],
            Ending::OnRegion => vec![("EXIT_ON_REGION", if rolling_back { "restored" } else { "appear" })],
            _ => vec![],
        };
        let mut target = Target::spawn(&dir.path("exits"), &env, via_shell);
        let pid = target.pid;
        if rolling_back {
            hotpatch_engine::apply(pid, &pkg, &opts()).expect("apply before the rollback");
        }
        let killer = match (ending, rolling_back) {
            (Ending::Signal(sig), _) => Some((sig, delay_us)),
            // A process cannot be told to exit on its own at a chosen point of
            // a rollback: SIGTERM does it.
            (Ending::Exits, true) => Some((libc::SIGTERM, delay_us)),
            (Ending::Exits, false) | (Ending::OnRegion, _) => None,
        };
        let killer = killer.map(|(sig, us)| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(us));
                // SAFETY: our own child, not yet reaped (its pid cannot be reused).
                unsafe { libc::kill(pid, sig) };
            })
        });
        let pkg2 = pkg.clone();
        let result = within("apply/rollback", move || {
            if rolling_back {
                hotpatch_engine::rollback(pid, None, &opts()).map(|_| ())
            } else {
                hotpatch_engine::apply(pid, &pkg2, &opts()).map(|_| ())
            }
        });
        let outcome = match result {
            Ok(()) => "done".to_owned(),
            Err(EngineError::ProcessExited(p)) if p == pid => "exited".to_owned(),
            Err(e) => {
                panic!("round {round} ({ending:?}, rollback {rolling_back}, shell {via_shell}, {delay_us} µs): {e:?}")
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
        if let Some(k) = killer {
            k.join().expect("killer thread");
        }
        assert_no_thread_traced(pid);
        target.reaped(&format!("round {round}"));
    }
    eprintln!("outcomes: {outcomes:?}");
}

/// The main thread leaves with pthread_exit: it stays listed as a zombie
/// while the other threads run on.
const MAIN_GONE: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
int counter = 41;
__attribute__((noinline)) int check(int x) { return x + counter; }
static void *printer(void *a) { for (;;) { printf("%d\n", check(1)); usleep(5000); } return a; }
static void *caller(void *a) { for (;;) { volatile int v = check(0); (void)v; usleep(100); } return a; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t;
    pthread_create(&t, 0, printer, 0);
    pthread_create(&t, 0, caller, 0);
    pthread_exit(0);
}
"#;

#[test]
fn process_whose_main_thread_has_exited() {
    let dir = Dir::new();
    dir.write("main_gone.c", MAIN_GONE);
    dir.write("fix_v2.c", FIX_V2);
    dir.gcc(&["-O1", "-pthread", "-o", "main_gone", "main_gone.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix_v2.c"]);
    let publisher = Publisher::new();
    let pkg = publisher.package(&dir.path("main_gone"), &dir.path("fix_v2.o"), &["check=check_v2"], 1);
    let proc = Proc::spawn(&dir.path("main_gone"), &[]);
    proc.expect_line("42", 100);
    let pid = proc.pid();
    // The other threads print before the main thread is gone: wait (bounded) for it to be.
    let main_gone = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).unwrap_or_default();
        status.lines().any(|l| l.starts_with("State:") && l.contains('Z'))
    };
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !main_gone() {
        assert!(std::time::Instant::now() < end, "the main thread never exited");
        std::thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..2 {
        let report = hotpatch_engine::apply(pid, &pkg, &opts()).expect("apply");
        assert_eq!(report.threads, 2, "the zombie main thread is not one to stop");
        proc.expect_line("83", 200);
        hotpatch_engine::rollback(pid, None, &opts()).expect("rollback");
        proc.expect_line("42", 200);
        assert_no_thread_traced(pid);
    }
}
