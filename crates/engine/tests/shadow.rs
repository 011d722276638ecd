//! Data-changing fixes on live processes: state added to existing objects
//! through shadow variables (include/hotpatch.h), kept from level to level,
//! dropped by rollback; callbacks the engine runs inside the process.

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, EngineError};
use std::path::{Path, PathBuf};

/// A service with per-connection objects whose layout a fix may not change.
/// Each stdin line `N` is a request on connection N; the answer line is what
/// `handle` returned. A second thread keeps the process multi-threaded.
const SERVER: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
struct conn { int fd; int requests; };
struct conn conns[4];
int mode = 1;
__attribute__((noinline)) int handle(struct conn *c, int x) { c->requests++; return x + 1; }
static void *idle(void *arg) { for (;;) usleep(1000); return arg; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t;
    pthread_create(&t, NULL, idle, NULL);
    int n;
    printf("ready\n");
    while (scanf("%d", &n) == 1)
        printf("%d %d mode %d\n", n, handle(&conns[n & 3], n), mode);
    return 0;
}
"#;

/// Level 1: counts requests per connection in a shadow variable, a field
/// `struct conn` does not have.
const LEVEL1: &str = r#"
#include <hotpatch.h>
struct conn { int fd; int requests; };
extern int mode;
int handle_v1(struct conn *c, int x) {
    c->requests++;
    if (x == 3) {
        /* More than the region's arena: the table grows. */
        char *big = hotpatch_shadow_get_or_alloc(c, 2, 300 << 10);
        if (!big || big[(300 << 10) - 1] != 0) return -4;
        /* More than the table may ever hold: NULL, nothing attached. */
        return hotpatch_shadow_get_or_alloc(c, 3, 128ul << 20) ? -3 : -2;
    }
    int *seen = hotpatch_shadow_get_or_alloc(c, 1, sizeof *seen);
    if (!seen) return -1;
    return 1000 * ++*seen + x;
}
void hotpatch_post_apply(void) { mode = 2; }
int hotpatch_pre_rollback(void) { hotpatch_shadow_free_all(1); return 0; }
void hotpatch_post_rollback(void) { mode = 1; }
"#;

/// Level 2: the same counter, found where level 1 left it.
const LEVEL2: &str = r#"
#include <hotpatch.h>
struct conn { int fd; int requests; };
extern int mode;
int handle_v2(struct conn *c, int x) {
    c->requests++;
    int *seen = hotpatch_shadow_get_or_alloc(c, 1, sizeof *seen);
    if (!seen) return -1;
    return 2000 * ++*seen + x;
}
void hotpatch_post_apply(void) { mode = 3; }
"#;

/// A fix whose post-apply callback crashes: reported, the fix stays applied.
const CRASHING: &str = r#"
#include <hotpatch.h>
struct conn { int fd; int requests; };
int handle_v9(struct conn *c, int x) { (void)c; return 9000 + x; }
void hotpatch_post_apply(void) { *(volatile int *)16 = 1; }
"#;

/// A fix whose pre-apply callback refuses: the process must not change.
const REFUSING: &str = r#"
#include <hotpatch.h>
struct conn { int fd; int requests; };
extern int mode;
int handle_bad(struct conn *c, int x) { (void)c; return -x; }
/* Frames of its own on the borrowed thread's stack. */
__attribute__((noinline)) static int decide(volatile char *scratch) {
    for (int i = 0; i < 4096; i++) scratch[i] = (char)(i + 1);
    return scratch[100] == 101 && mode == 1 ? 7 : 0;
}
int hotpatch_pre_apply(void) { volatile char scratch[4096]; return decide(scratch); }
"#;

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

/// Compiles a fix and links the shadow runtime into it, as `hotpatch pack` does.
fn payload(dir: &Dir, name: &str, source: &str) -> PathBuf {
    dir.write(&format!("{name}.c"), source);
    let include = format!("-I{}", include_dir().display());
    dir.gcc(&["-c", "-fPIC", "-O2", "-ffunction-sections", &include, &format!("{name}.c")]);
    let object = std::fs::read(dir.path(&format!("{name}.o"))).expect("read object");
    let linked = hotpatch_build::with_runtime(object).expect("link the runtime");
    let path = dir.path(&format!("{name}.payload.o"));
    std::fs::write(&path, linked).expect("write payload");
    path
}

fn build_server(dir: &Dir) -> PathBuf {
    dir.write("server.c", SERVER);
    // Hand-written replacements need callers that assume nothing of their
    // callee's register use (`hotpatch pack`; `hotpatch build` needs no such flag).
    dir.gcc(&["-O2", "-fno-ipa-ra", "-g0", "-pthread", "-o", "server", "server.c"]);
    dir.path("server")
}

fn opts() -> ApplyOptions {
    ApplyOptions::default()
}

/// Sends a request on connection `n` and waits for its answer line.
fn request(proc: &mut Proc, n: i32, want: &str) {
    proc.send(&n.to_string());
    // The answer is the next line (waiting as long as expect_line would).
    let got = (0..20).find_map(|_| proc.drain_one());
    assert_eq!(got.as_deref(), Some(want), "answer to a request on connection {n}");
}

#[test]
fn a_shadow_counter_lives_through_an_upgrade_and_rollback_drops_it() {
    let dir = Dir::new();
    let server = build_server(&dir);
    let publisher = Publisher::new();
    let level1 = publisher.package(&server, &payload(&dir, "level1", LEVEL1), &["handle=handle_v1"], 1);
    let level2 = publisher.package(&server, &payload(&dir, "level2", LEVEL2), &["handle=handle_v2"], 2);
    let mut proc = Proc::spawn_driven(&server, &[]);
    proc.expect_line("ready", 1);
    request(&mut proc, 0, "0 1 mode 1");

    let report = hotpatch_engine::apply(proc.pid(), &level1, &opts()).expect("apply level 1");
    assert!(report.callback_problem.is_none(), "{:?}", report.callback_problem);
    // The post-apply callback ran inside the process.
    request(&mut proc, 0, "0 1000 mode 2");
    request(&mut proc, 0, "0 2000 mode 2");
    request(&mut proc, 1, "1 1001 mode 2");
    request(&mut proc, 3, "3 -2 mode 2");
    assert_eq!(shadow_objects(proc.pid()), vec![("server-l1".to_string(), 3, 8 + (300 << 10))]);

    hotpatch_engine::apply(proc.pid(), &level2, &opts()).expect("apply level 2");
    // Adopted on first use: until then level 2's table is level 1's.
    assert_eq!(shadow_objects(proc.pid()), vec![("server-l2".to_string(), 3, 8 + (300 << 10))]);
    // Level 2 counts on from where level 1 left each connection.
    request(&mut proc, 0, "0 6000 mode 3");
    request(&mut proc, 1, "1 4001 mode 3");
    request(&mut proc, 2, "2 2002 mode 3");
    assert_eq!(shadow_objects(proc.pid()), vec![("server-l2".to_string(), 4, 12 + (300 << 10))]);

    let back = hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
    assert_eq!(back.level, 2);
    request(&mut proc, 0, "0 1 mode 3");

    // Applied again, level 1 starts from an empty table.
    hotpatch_engine::apply(proc.pid(), &level1, &opts()).expect("apply level 1 again");
    request(&mut proc, 0, "0 1000 mode 2");
    hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback level 1");
    // Level 1's own rollback callbacks ran this time.
    request(&mut proc, 0, "0 1 mode 1");
    assert!(shadow_objects(proc.pid()).is_empty());
    assert!(proc.alive());
}

/// (patch id, objects, bytes) of each applied hotpatch's shadow table.
fn shadow_objects(pid: i32) -> Vec<(String, u64, u64)> {
    hotpatch_engine::shadow::usage_in(pid)
        .expect("shadow usage")
        .into_iter()
        .inspect(|(_, u)| assert!(u.live, "an applied table is live"))
        .map(|(id, u)| (id, u.objects, u.bytes))
        .collect()
}

#[test]
fn a_crashing_post_apply_callback_is_reported_and_the_fix_stays() {
    let dir = Dir::new();
    let server = build_server(&dir);
    let publisher = Publisher::new();
    let crashing = publisher.package(&server, &payload(&dir, "crashing", CRASHING), &["handle=handle_v9"], 1);
    let mut proc = Proc::spawn_driven(&server, &[]);
    proc.expect_line("ready", 1);
    let report = hotpatch_engine::apply(proc.pid(), &crashing, &opts()).expect("applied");
    let problem = report.callback_problem.expect("the crash is reported");
    assert_eq!(problem.callback, "hotpatch_post_apply");
    assert!(problem.problem.contains("SIGSEGV at 0x"), "{}", problem.problem);
    // The thread the callback ran in was restored: the process goes on, fixed.
    request(&mut proc, 1, "1 9001 mode 1");
    assert!(proc.alive());
}

/// The bytes of the main thread's stack mapping.
fn main_stack(pid: i32) -> Vec<u8> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let stack = hotpatch_engine::procfs::parse_maps(&maps).into_iter().find(|m| m.path == "[stack]").expect("[stack]");
    let mem = hotpatch_engine::procfs::ProcessMemory::open(pid, false).expect("mem");
    mem.read_vec(stack.start, stack.len() as usize).expect("read stack")
}

#[test]
fn a_refusing_pre_apply_callback_leaves_the_process_as_it_was() {
    let dir = Dir::new();
    let server = build_server(&dir);
    let publisher = Publisher::new();
    let refusing = publisher.package(&server, &payload(&dir, "refusing", REFUSING), &["handle=handle_bad"], 1);
    let mut proc = Proc::spawn_driven(&server, &[]);
    proc.expect_line("ready", 1);
    request(&mut proc, 2, "2 3 mode 1");
    let before = (snapshot(proc.pid()), main_stack(proc.pid()));

    let err = hotpatch_engine::apply(proc.pid(), &refusing, &opts()).expect_err("the callback refuses");
    match &err {
        EngineError::Callback { callback, problem, .. } => {
            assert_eq!(callback, "hotpatch_pre_apply");
            assert!(problem.contains("returned 7"), "{problem}");
        }
        other => panic!("unexpected error: {other}"),
    }
    // Its stack too, where the callback ran (the main thread waits in read).
    assert!((snapshot(proc.pid()), main_stack(proc.pid())) == before, "a refused apply changed the process");
    assert_eq!(region_count(proc.pid()), 0);
    request(&mut proc, 2, "2 3 mode 1");
    assert!(proc.alive());
}

/// Two threads attach and update shadow data all the time; the main thread
/// answers each stdin line with `total()`.
const WORKERS: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
struct item { long v; };
struct item items[2][64];
__attribute__((noinline)) void touch(struct item *it) { it->v++; }
__attribute__((noinline)) long total(void) { return -1; }
static void *worker(void *arg) {
    struct item *mine = arg;
    for (unsigned i = 0;; i++) {
        touch(&mine[i % 64]);
        if (i % 16 == 0) usleep(50);
    }
    return 0;
}
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, worker, items[i]);
    char line[16];
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) printf("%ld\n", total());
    return 0;
}
"#;

/// Level 1 attaches a counter to every item it touches.
const COUNT1: &str = r#"
#include <hotpatch.h>
struct item { long v; };
extern struct item items[2][64];
void touch_v1(struct item *it) {
    it->v++;
    long *n = hotpatch_shadow_get_or_alloc(it, 5, sizeof *n);
    if (n) ++*n;
}
long total_v1(void) {
    long sum = 0;
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 64; i++) {
            long *n = hotpatch_shadow_get(&items[t][i], 5);
            if (n) sum += *n;
        }
    return sum;
}
"#;

/// Level 2 attaches nothing: it only finds what level 1 attached.
const COUNT2: &str = r#"
#include <hotpatch.h>
struct item { long v; };
extern struct item items[2][64];
void touch_v2(struct item *it) {
    it->v++;
    long *n = hotpatch_shadow_get(it, 5);
    if (n) ++*n;
}
long total_v2(void) {
    long sum = 0;
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 64; i++) {
            long *n = hotpatch_shadow_get(&items[t][i], 5);
            if (n) sum += *n;
        }
    return sum;
}
"#;

/// The next answer of the workers fixture to a line on its stdin.
fn total(proc: &mut Proc) -> i64 {
    proc.send("total");
    let line = (0..20).find_map(|_| proc.drain_one()).expect("an answer");
    line.parse().unwrap_or_else(|_| panic!("not a number: {line:?}"))
}

#[test]
fn threads_using_the_table_while_a_level_replaces_another_keep_every_entry() {
    let dir = Dir::new();
    dir.write("workers.c", WORKERS);
    dir.gcc(&["-O2", "-fno-ipa-ra", "-g0", "-pthread", "-o", "workers", "workers.c"]);
    let workers = dir.path("workers");
    let publisher = Publisher::new();
    let count1 =
        publisher.package(&workers, &payload(&dir, "count1", COUNT1), &["touch=touch_v1", "total=total_v1"], 1);
    let count2 =
        publisher.package(&workers, &payload(&dir, "count2", COUNT2), &["touch=touch_v2", "total=total_v2"], 2);
    let mut proc = Proc::spawn_driven(&workers, &[]);
    proc.expect_line("ready", 1);
    assert_eq!(total(&mut proc), -1);

    hotpatch_engine::apply(proc.pid(), &count1, &opts()).expect("apply level 1");
    // Every item gets its counter once the workers went round once.
    let mut attached = 0;
    for _ in 0..100_000 {
        attached = hotpatch_engine::shadow::usage_in(proc.pid()).expect("usage")[0].1.objects;
        if attached == 128 {
            break;
        }
        std::thread::yield_now();
    }
    assert_eq!(attached, 128);
    let before = total(&mut proc);
    assert!(before >= 128, "{before}");

    hotpatch_engine::apply(proc.pid(), &count2, &opts()).expect("apply level 2");
    let after = total(&mut proc);
    assert!(after >= before, "level 2 lost level 1's counters: {after} < {before}");
    let later = total(&mut proc);
    assert!(later >= after);
    assert_eq!(shadow_objects(proc.pid()), vec![("workers-l2".to_string(), 128, 128 * 8)]);
    hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
    assert_eq!(total(&mut proc), -1);
    assert!(proc.alive());
}

/// A fix that refuses its own rollback until the process says it may.
const STICKY: &str = r#"
#include <hotpatch.h>
struct conn { int fd; int requests; };
extern int mode;
int handle_v5(struct conn *c, int x) { (void)c; return 5000 + x; }
int hotpatch_pre_rollback(void) { return mode == 1 ? 1 : 0; }
"#;

#[test]
fn a_refusing_pre_rollback_callback_keeps_the_fix() {
    let dir = Dir::new();
    let server = build_server(&dir);
    let publisher = Publisher::new();
    let sticky = publisher.package(&server, &payload(&dir, "sticky", STICKY), &["handle=handle_v5"], 1);
    let mut proc = Proc::spawn_driven(&server, &[]);
    proc.expect_line("ready", 1);
    hotpatch_engine::apply(proc.pid(), &sticky, &opts()).expect("applied");
    request(&mut proc, 1, "1 5001 mode 1");
    let err = hotpatch_engine::rollback(proc.pid(), None, &opts()).expect_err("refused");
    assert!(
        matches!(&err, EngineError::Callback { callback, problem, .. }
            if callback == "hotpatch_pre_rollback" && problem.contains("returned 1")),
        "{err}"
    );
    assert_eq!(live_region_count(proc.pid()), 1);
    request(&mut proc, 1, "1 5001 mode 1");
}

/// A pre-apply callback that never returns.
const HANGING: &str = r#"
#include <hotpatch.h>
struct conn { int fd; int requests; };
int handle_v6(struct conn *c, int x) { (void)c; return 6000 + x; }
int hotpatch_pre_apply(void) { for (;;) __asm__ volatile(""); }
"#;

#[test]
fn a_callback_that_never_returns_is_interrupted_and_the_apply_refused() {
    let dir = Dir::new();
    let server = build_server(&dir);
    let publisher = Publisher::new();
    let hanging = publisher.package(&server, &payload(&dir, "hanging", HANGING), &["handle=handle_v6"], 1);
    let mut proc = Proc::spawn_driven(&server, &[]);
    proc.expect_line("ready", 1);
    request(&mut proc, 1, "1 2 mode 1");
    let before = snapshot(proc.pid());
    let err = hotpatch_engine::apply(proc.pid(), &hanging, &opts()).expect_err("refused");
    assert!(
        matches!(&err, EngineError::Callback { callback, problem, .. }
            if callback == "hotpatch_pre_apply" && problem.contains("did not return")),
        "{err}"
    );
    assert_eq!(snapshot(proc.pid()), before);
    // The borrowed thread goes back to reading its input.
    request(&mut proc, 1, "1 2 mode 1");
}
