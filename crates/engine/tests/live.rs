//! The engine against real processes (needs root for ptrace and gcc).

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, EngineError};
use std::time::Duration;

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(10), ..Default::default() }
}

fn apply_rollback(pie: bool) {
    let dir = Dir::new();
    let (svc, v2, _) = build_svc(&dir, pie);
    let publisher = Publisher::new();
    let pkg = publisher.package(&svc, &v2, &["check=check_v2"], 1);
    let proc = Proc::spawn(&svc, &[]);
    proc.expect_line("42", 100);

    let report = hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply");
    assert_eq!(report.functions, vec!["check"]);
    assert_eq!(report.threads, 1);
    proc.expect_line("83", 200);
    let status = hotpatch_engine::status(proc.pid()).unwrap();
    assert_eq!(status.len(), 1);
    assert!(status[0].active);
    assert_eq!(status[0].record.level, 1);
    assert_eq!(region_count(proc.pid()), 1);

    let back = hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
    assert_eq!(back.patch_id, pkg.manifest.patch_id);
    proc.expect_line("42", 200);
    // The region stays mapped, retired: applied no more.
    let status = hotpatch_engine::status(proc.pid()).unwrap();
    assert_eq!(status.len(), 1);
    assert!(!status[0].active);
    assert_eq!(status[0].record.retired.map(|r| r.replaced_by_level), Some(None));
    assert_eq!(region_count(proc.pid()), 1);
    assert_eq!(live_region_count(proc.pid()), 0);
}

#[test]
fn pie_executable_apply_and_rollback_restores_bytes() {
    apply_rollback(true);
}

#[test]
fn non_pie_executable_apply_and_rollback() {
    apply_rollback(false);
}

#[test]
fn rollback_restores_original_bytes_exactly() {
    let dir = Dir::new();
    let (svc, v2, _) = build_svc(&dir, true);
    let publisher = Publisher::new();
    let pkg = publisher.package(&svc, &v2, &["check=check_v2"], 1);
    let proc = Proc::spawn(&svc, &[]);
    proc.expect_line("42", 100);
    let (maps_before, text_before) = snapshot(proc.pid());
    hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply");
    assert_ne!(snapshot(proc.pid()).1, text_before, "apply changed no code");
    hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
    let (maps_after, text_after) = snapshot(proc.pid());
    assert_eq!(text_after, text_before);
    // Only the retired region is new in the maps.
    assert_eq!(maps_without_regions(&maps_after), maps_without_regions(&maps_before));
    assert_eq!(region_count(proc.pid()), 1);
}

#[test]
fn cumulative_levels_replace_and_lower_levels_are_refused() {
    let dir = Dir::new();
    let (svc, v2, v3) = build_svc(&dir, true);
    let publisher = Publisher::new();
    let l1 = publisher.package(&svc, &v2, &["check=check_v2"], 1);
    let l2 = publisher.package(&svc, &v3, &["check=check_v3"], 2);
    let proc = Proc::spawn(&svc, &[]);
    proc.expect_line("42", 100);

    hotpatch_engine::apply(proc.pid(), &l1, &opts()).expect("level 1");
    proc.expect_line("83", 200);
    let r2 = hotpatch_engine::apply(proc.pid(), &l2, &opts()).expect("level 2");
    assert_eq!(r2.replaced.as_ref().map(|r| r.level), Some(1));
    proc.expect_line("1001", 200);
    assert_eq!(live_region_count(proc.pid()), 1);
    let status = hotpatch_engine::status(proc.pid()).unwrap();
    let retired: Vec<_> = status.iter().filter_map(|a| a.record.retired.map(|r| (a.record.level, r))).collect();
    assert_eq!(retired.len(), 1, "level 1's region stays mapped, retired: {status:?}");
    assert_eq!((retired[0].0, retired[0].1.replaced_by_level), (1, Some(2)));

    let before = snapshot(proc.pid());
    match hotpatch_engine::apply(proc.pid(), &l1, &opts()) {
        Err(EngineError::LevelNotHigher { applied: 2, offered: 1, .. }) => {}
        other => panic!("expected LevelNotHigher, got {other:?}"),
    }
    match hotpatch_engine::apply(proc.pid(), &l2, &opts()) {
        Err(EngineError::LevelNotHigher { applied: 2, offered: 2, .. }) => {}
        other => panic!("expected LevelNotHigher, got {other:?}"),
    }
    assert_eq!(snapshot(proc.pid()), before);

    hotpatch_engine::rollback(proc.pid(), Some(&l2.manifest.patch_id), &opts()).expect("rollback");
    proc.expect_line("42", 200);
    assert_eq!(live_region_count(proc.pid()), 0);
    assert_eq!(retired_region_count(proc.pid()), 2);
}

const THREADS: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
int counter = 41;
static int pipefd[2];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static void fail(const char *what) { printf("FAIL %s errno=%d\n", what, errno); fflush(stdout); exit(3); }
__attribute__((noinline)) int check(int x) { return x + counter; }
static void *in_accept(void *a) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(s, (void *)&sa, sizeof sa) || listen(s, 1)) fail("listen");
    for (;;) { int c = accept(s, 0, 0); if (c < 0) fail("accept"); close(c); }
}
static void *in_read(void *a) { char b; for (;;) if (read(pipefd[0], &b, 1) <= 0) fail("read"); }
static void *in_epoll(void *a) {
    int ep = epoll_create1(0); struct epoll_event ev;
    for (;;) if (epoll_wait(ep, &ev, 1, -1) < 0) fail("epoll_wait");
}
static void *in_sleep(void *a) {
    for (;;) { struct timespec t = { 3600, 0 }; if (nanosleep(&t, 0)) fail("nanosleep"); }
}
static void *in_futex(void *a) {
    pthread_mutex_lock(&mu);
    for (;;) if (pthread_cond_wait(&cv, &mu)) fail("cond_wait");
}
static void *in_loop(void *a) { for (;;) { volatile int v = check(0); (void)v; usleep(100); } }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pipe(pipefd)) fail("pipe");
    void *(*fns[])(void *) = { in_accept, in_read, in_epoll, in_sleep, in_futex, in_loop, in_loop };
    for (unsigned i = 0; i < sizeof fns / sizeof fns[0]; i++) { pthread_t t; pthread_create(&t, 0, fns[i], 0); }
    for (;;) { printf("%d\n", check(1)); usleep(5000); }
}
"#;

#[test]
fn multithreaded_target_with_threads_blocked_in_syscalls() {
    let dir = Dir::new();
    dir.write("threads.c", THREADS);
    dir.write("fix_v2.c", FIX_V2);
    dir.gcc(&["-O1", "-pthread", "-o", "threads", "threads.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix_v2.c"]);
    let publisher = Publisher::new();
    let pkg = publisher.package(&dir.path("threads"), &dir.path("fix_v2.o"), &["check=check_v2"], 1);
    let mut proc = Proc::spawn(&dir.path("threads"), &[]);
    proc.expect_line("42", 100);
    std::thread::sleep(Duration::from_millis(100));
    for round in 0..3 {
        let r = hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply");
        assert_eq!(r.threads, 8, "round {round}");
        proc.expect_line("83", 200);
        hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
        proc.expect_line("42", 200);
    }
    let rest = proc.drain();
    assert!(rest.iter().all(|l| !l.starts_with("FAIL")), "a blocked thread saw an error: {rest:?}");
    assert!(proc.alive());
}

#[test]
fn function_in_a_shared_library() {
    let dir = Dir::new();
    dir.write("lib.c", "__attribute__((noinline)) int lib_check(int x) { return x * 10 + 2; }\n");
    dir.write(
        "main.c",
        "#include <stdio.h>\n#include <unistd.h>\nint lib_check(int);\n\
         int main(void){ setvbuf(stdout,0,_IOLBF,0); for(;;){ printf(\"%d\\n\", lib_check(4)); usleep(5000);} }\n",
    );
    dir.write("fix.c", "int lib_check_v2(int x) { return x * 100; }\n");
    dir.gcc(&["-O1", "-shared", "-fPIC", "-o", "libdemo.so", "lib.c"]);
    dir.gcc(&["-O1", "-o", "main", "main.c", "-L.", "-ldemo"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix.c"]);
    let publisher = Publisher::new();
    let pkg = publisher.package(&dir.path("libdemo.so"), &dir.path("fix.o"), &["lib_check=lib_check_v2"], 1);
    let libdir = dir.0.path().to_string_lossy().into_owned();
    let proc = Proc::spawn(&dir.path("main"), &[("LD_LIBRARY_PATH", &libdir)]);
    proc.expect_line("42", 100);
    assert_eq!(hotpatch_engine::processes_with_target(&pkg.manifest.target.build_id), vec![proc.pid()]);
    hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply");
    // Lines printed while processes_with_target read every process queue up
    // first (it takes ~0.5 s on a busy machine): a bound, not a timing.
    proc.expect_line("400", 2000);
    hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
    proc.expect_line("42", 200);
}

#[test]
fn static_function_whose_name_exists_in_two_files() {
    let dir = Dir::new();
    dir.write("a.c", "__attribute__((noinline)) static int helper(int x) { volatile int y = x; return y + 1; }\nint from_a(int x) { return helper(x); }\n");
    dir.write("b.c", "__attribute__((noinline)) static int helper(int x) { volatile int y = x; return y + 2; }\nint from_b(int x) { return helper(x); }\n");
    dir.write(
        "main.c",
        "#include <stdio.h>\n#include <unistd.h>\nint from_a(int); int from_b(int);\n\
         int main(void){ setvbuf(stdout,0,_IOLBF,0); for(;;){ printf(\"%d %d\\n\", from_a(10), from_b(10)); usleep(5000);} }\n",
    );
    dir.write("fix.c", "int helper_b_v2(int x) { return x + 50; }\n");
    dir.gcc(&["-O2", "-o", "dup", "main.c", "a.c", "b.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix.c"]);
    let publisher = Publisher::new();
    let manifest = publisher.manifest(&dir.path("dup"), &dir.path("fix.o"), &["b.c:helper=helper_b_v2"], 1);
    assert_eq!(manifest.functions[0].file.as_deref(), Some("b.c"));
    let pkg = publisher.sign(manifest, &dir.path("fix.o"));
    let proc = Proc::spawn(&dir.path("dup"), &[]);
    proc.expect_line("11 12", 100);
    hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply");
    proc.expect_line("11 60", 200);
    hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
    proc.expect_line("11 12", 200);
}

const BUSY: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
volatile int keep_spinning = 1;
int counter = 41;
__attribute__((noinline)) int check(int x) {
    while (keep_spinning) { __asm__ volatile("" ::: "memory"); }
    return x + counter;
}
static void *spinner(void *a) { check(0); return 0; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t; pthread_create(&t, 0, spinner, 0);
    for (;;) { printf("alive\n"); usleep(5000); }
}
"#;

#[test]
fn thread_busy_in_the_old_function_is_never_patched_under() {
    let dir = Dir::new();
    dir.write("busy.c", BUSY);
    dir.write("fix.c", "int check_v2(int x) { return x; }\n");
    dir.gcc(&["-O1", "-pthread", "-o", "busy", "busy.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix.c"]);
    let publisher = Publisher::new();
    let pkg = publisher.package(&dir.path("busy"), &dir.path("fix.o"), &["check=check_v2"], 1);
    let proc = Proc::spawn(&dir.path("busy"), &[]);
    proc.expect_line("alive", 100);
    let before = snapshot(proc.pid());
    let short = ApplyOptions { timeout: Duration::from_millis(300), ..Default::default() };
    match hotpatch_engine::apply(proc.pid(), &pkg, &short) {
        Err(EngineError::Busy { function, attempts, .. }) => {
            assert_eq!(function, "check");
            // One stop found it busy; the wait for its frame to return
            // (return breakpoint) then ran into the timeout.
            assert!(attempts >= 1);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(snapshot(proc.pid()), before);
    proc.expect_line("alive", 100);
}

const FORKS: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
int counter = 41;
static volatile sig_atomic_t want_fork;
static void on_usr1(int s) { (void)s; want_fork = 1; }
__attribute__((noinline)) int check(int x) { return x + counter; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR1, on_usr1);
    int child = 0;
    for (;;) {
        if (want_fork) { want_fork = 0; pid_t p = fork(); if (p == 0) child = 1; else printf("forked %d\n", (int)p); }
        if (!child) printf("%d\n", check(1));
        usleep(5000);
    }
}
"#;

#[test]
fn child_forked_after_the_patch_carries_it() {
    let dir = Dir::new();
    dir.write("forks.c", FORKS);
    dir.write("fix_v2.c", FIX_V2);
    dir.gcc(&["-O1", "-o", "forks", "forks.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix_v2.c"]);
    let publisher = Publisher::new();
    let pkg = publisher.package(&dir.path("forks"), &dir.path("fix_v2.o"), &["check=check_v2"], 1);
    let proc = Proc::spawn(&dir.path("forks"), &[]);
    proc.expect_line("42", 100);
    hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply");
    proc.expect_line("83", 200);
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(proc.pid(), libc::SIGUSR1) };
    let child = (0..400)
        .find_map(|_| proc.drain_one().and_then(|l| l.strip_prefix("forked ").and_then(|p| p.parse::<i32>().ok())))
        .expect("fixture forked");
    let status = hotpatch_engine::status(child).expect("status of the child");
    // Reap the grandchild whatever the assertions say.
    unsafe { libc::kill(child, libc::SIGKILL) };
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].record.patch_id, pkg.manifest.patch_id);
    assert!(status[0].active, "the child's sites must hold the jump too");
}
