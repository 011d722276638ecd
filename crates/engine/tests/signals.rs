//! The stack check through signal frames: a thread running a signal handler
//! (on its own stack or on an alternate signal stack) is still inside the
//! function the signal interrupted.

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, EngineError};
use std::time::Duration;

/// `victim` spins in the place argv[1] names (`check` itself, `inner` called
/// by check, or `other`, unrelated), until SIGUSR1 interrupts it; the handler
/// runs on the thread's stack or on an alternate signal stack (argv[2]) and
/// then blocks in pause() or spins (argv[3]) for ever. The main thread calls
/// check and prints what it returns.
const SIGFRAME: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int counter = 41;
static volatile int spinning, handled;
static const char *where, *stack, *handler_does;
#define SPIN() for (;;) __asm__ volatile("" ::: "memory")
__attribute__((noinline)) void inner(void) { spinning = 1; SPIN(); }
__attribute__((noinline)) int check(int x) {
    if (x == 0) {
        if (strcmp(where, "check") == 0) { spinning = 1; SPIN(); }
        inner();
    }
    return x + counter;
}
__attribute__((noinline)) void other(void) { spinning = 1; SPIN(); }
static void handler(int sig) {
    (void)sig;
    handled = 1;
    if (strcmp(handler_does, "pause") == 0) for (;;) pause();
    SPIN();
}
static void *victim(void *a) {
    (void)a;
    if (strcmp(stack, "alt") == 0) {
        size_t size = 256 * 1024;
        void *p = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        stack_t ss = { .ss_sp = p, .ss_size = size, .ss_flags = 0 };
        if (p == MAP_FAILED || sigaltstack(&ss, 0)) { printf("FAIL sigaltstack\n"); exit(3); }
    }
    if (strcmp(where, "other") == 0) other(); else check(0);
    return 0;
}
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 4) return 2;
    where = argv[1]; stack = argv[2]; handler_does = argv[3];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = strcmp(stack, "alt") == 0 ? SA_ONSTACK : 0;
    sigaction(SIGUSR1, &sa, 0);
    pthread_t t;
    pthread_create(&t, 0, victim, 0);
    while (!spinning) usleep(100);
    pthread_kill(t, SIGUSR1);
    while (!handled) usleep(100);
    printf("in handler\n");
    for (;;) { printf("%d\n", check(1)); usleep(5000); }
}
"#;

struct Fixture {
    dir: Dir,
    publisher: Publisher,
    pkg: hotpatch_format::VerifiedPackage,
}

fn fixture() -> Fixture {
    let dir = Dir::new();
    dir.write("sigframe.c", SIGFRAME);
    dir.write("fix_v2.c", FIX_V2);
    dir.gcc(&["-O1", "-pthread", "-o", "sigframe", "sigframe.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix_v2.c"]);
    let publisher = Publisher::new();
    let pkg = publisher.package(&dir.path("sigframe"), &dir.path("fix_v2.o"), &["check=check_v2"], 1);
    Fixture { dir, publisher, pkg }
}

fn start(f: &Fixture, args: &[&str]) -> Proc {
    let proc = Proc::spawn_args(&f.dir.path("sigframe"), args, &[]);
    proc.expect_line("in handler", 10);
    proc.expect_line("42", 10);
    proc
}

/// The signal interrupted check (or a function check called): the thread
/// will return into check once its handler returns, so check is busy.
fn refused_as_busy(f: &Fixture, args: &[&str]) {
    let proc = start(f, args);
    let before = snapshot(proc.pid());
    let short = ApplyOptions { timeout: Duration::from_millis(300), ..Default::default() };
    match hotpatch_engine::apply(proc.pid(), &f.pkg, &short) {
        Err(EngineError::Busy { function, .. }) => assert_eq!(function, "check", "{args:?}"),
        other => panic!("{args:?}: expected Busy in check, got {other:?}"),
    }
    assert_eq!(snapshot(proc.pid()), before, "{args:?}: the refusal changed the process");
    assert_no_thread_traced(proc.pid());
    proc.expect_line("42", 100);
}

/// The signal interrupted an unrelated function: the handler blocked (or
/// spinning) on top of it does not keep check from being patched.
fn patched(f: &Fixture, args: &[&str]) {
    let proc = start(f, args);
    let report = hotpatch_engine::apply(proc.pid(), &f.pkg, &ApplyOptions::default())
        .unwrap_or_else(|e| panic!("{args:?}: apply failed: {e}"));
    assert_eq!(report.threads, 2);
    // Every stack unwound to its end, through the signal frame, without
    // falling back to the conservative scan.
    assert_eq!(report.fallback_scans, 0, "{args:?}");
    proc.expect_line("83", 200);
    hotpatch_engine::rollback(proc.pid(), None, &ApplyOptions::default())
        .unwrap_or_else(|e| panic!("{args:?}: rollback failed: {e}"));
    proc.expect_line("42", 200);
    assert_no_thread_traced(proc.pid());
}

#[test]
fn handler_on_the_thread_stack_over_the_patched_function_is_busy() {
    let f = fixture();
    refused_as_busy(&f, &["check", "main", "pause"]);
    refused_as_busy(&f, &["inner", "main", "pause"]);
    refused_as_busy(&f, &["inner", "main", "spin"]);
}

#[test]
fn handler_on_an_alternate_stack_over_the_patched_function_is_busy() {
    let f = fixture();
    refused_as_busy(&f, &["check", "alt", "pause"]);
    refused_as_busy(&f, &["inner", "alt", "pause"]);
    refused_as_busy(&f, &["inner", "alt", "spin"]);
}

#[test]
fn handler_over_an_unrelated_function_does_not_block_the_patch() {
    let f = fixture();
    patched(&f, &["other", "main", "pause"]);
    patched(&f, &["other", "alt", "pause"]);
    patched(&f, &["other", "alt", "spin"]);
    let _ = &f.publisher;
}
