//! Regions replaced by a higher level or rolled back are retired, never
//! unmapped: a stack the check cannot see (here a `ucontext` coroutine) may be
//! suspended inside their code and return into it later.

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, EngineError, MAX_RETIRED_REGIONS};
use std::time::Duration;

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(10), ..Default::default() }
}

/// A coroutine runs `check` in a loop on its own stack; `check` yields to the
/// main thread from its middle, so between two resumes the coroutine is
/// always suspended inside `check` (or inside its replacement, once the site
/// leads there). The main thread resumes it once per line read from stdin
/// and prints what the last completed call returned; between lines it blocks
/// in `read`, far from any function being replaced, so the engine's stack
/// check (thread stacks only) lets every transition through.
const COROUTINE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#ifdef DECLARE_STACKS
/* How a process tells the engine where its user-level stacks are. HP_DECLARE
   chooses what it declares: "stack" (the coroutine's), "empty", "bad". */
#include <stdint.h>
struct hp_range { uintptr_t start, end; };
static struct hp_range hp_ranges[1];
static char spare[4096];
struct { uint32_t magic, count; struct hp_range *ranges; } hotpatch_user_stacks;
#endif
int counter = 41;
static ucontext_t main_ctx, co_ctx;
static char co_stack[256 * 1024];
static int last;
__attribute__((noinline)) void yield_to_main(void) { swapcontext(&co_ctx, &main_ctx); }
__attribute__((noinline)) int check(int x) { int r = x + counter; yield_to_main(); return r; }
static void co(void) { for (;;) last = check(1); }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    getcontext(&co_ctx);
    co_ctx.uc_stack.ss_sp = co_stack;
    co_ctx.uc_stack.ss_size = sizeof co_stack;
    co_ctx.uc_link = 0;
    makecontext(&co_ctx, co, 0);
#ifdef DECLARE_STACKS
    const char *mode = getenv("HP_DECLARE");
    char *stack = strcmp(mode, "stack") == 0 ? co_stack : spare;
    hp_ranges[0].start = (uintptr_t)stack;
    hp_ranges[0].end = (uintptr_t)stack + (stack == co_stack ? sizeof co_stack : sizeof spare);
    hotpatch_user_stacks.ranges = hp_ranges;
    hotpatch_user_stacks.count = 1;
    hotpatch_user_stacks.magic = strcmp(mode, "bad") == 0 ? 0xdead : 0x53555048;
#endif
    swapcontext(&main_ctx, &co_ctx);
    printf("ready\n");
    char line[64];
    while (fgets(line, sizeof line, stdin)) { swapcontext(&main_ctx, &co_ctx); printf("%d\n", last); }
    return 0;
}
"#;

/// Level 1: yields from its middle too, so the coroutine gets suspended inside it.
const CO_V2: &str = r#"
extern int counter;
void yield_to_main(void);
int check_v2(int x) { int r = x + counter * 2; yield_to_main(); return r + 1; }
"#;

/// Level 2: the same shape, another answer.
const CO_V3: &str = r#"
void yield_to_main(void);
int check_v3(int x) { int r = 1000 + x; yield_to_main(); return r; }
"#;

struct Coroutine {
    dir: Dir,
    publisher: Publisher,
}

impl Coroutine {
    fn build() -> Coroutine {
        let dir = Dir::new();
        dir.write("co.c", COROUTINE);
        dir.write("co_v2.c", CO_V2);
        dir.write("co_v3.c", CO_V3);
        dir.gcc(&["-O1", "-fno-ipa-ra", "-o", "co", "co.c"]);
        dir.gcc(&["-O1", "-fno-ipa-ra", "-DDECLARE_STACKS", "-o", "co_declared", "co.c"]);
        dir.gcc(&["-c", "-fPIC", "-O2", "-ffunction-sections", "co_v2.c"]);
        dir.gcc(&["-c", "-fPIC", "-O2", "-ffunction-sections", "co_v3.c"]);
        Coroutine { dir, publisher: Publisher::new() }
    }

    fn level(&self, level: u32) -> hotpatch_format::VerifiedPackage {
        let (obj, spec) = if level == 1 { ("co_v2.o", "check=check_v2") } else { ("co_v3.o", "check=check_v3") };
        self.publisher.package(&self.dir.path("co"), &self.dir.path(obj), &[spec], level)
    }

    /// The fixture, with its coroutine suspended inside the baseline `check`.
    fn spawn(&self) -> Proc {
        let proc = Proc::spawn_driven(&self.dir.path("co"), &[]);
        proc.expect_line("ready", 1);
        proc
    }

    /// The same, built to declare `hotpatch_user_stacks` as `mode` says.
    fn spawn_declaring(&self, mode: &str) -> Proc {
        let proc = Proc::spawn_driven(&self.dir.path("co_declared"), &[("HP_DECLARE", mode)]);
        proc.expect_line("ready", 1);
        proc
    }

    /// A package for the declaring build (another build-id).
    fn declared_level(&self, level: u32) -> hotpatch_format::VerifiedPackage {
        let (obj, spec) = if level == 1 { ("co_v2.o", "check=check_v2") } else { ("co_v3.o", "check=check_v3") };
        self.publisher.package(&self.dir.path("co_declared"), &self.dir.path(obj), &[spec], level)
    }
}

/// Resumes the coroutine once and expects what it completed.
fn step(proc: &mut Proc, want: &str) {
    proc.send("");
    proc.expect_line(want, 1);
}

#[test]
fn rollback_while_a_coroutine_is_suspended_in_the_replacement() {
    let co = Coroutine::build();
    let mut proc = co.spawn();
    hotpatch_engine::apply(proc.pid(), &co.level(1), &opts()).expect("apply level 1");
    // The baseline call completes; the next call enters level 1 and yields inside it.
    step(&mut proc, "42");

    let report = hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
    assert_eq!(report.retries, 0, "the main thread was blocked in read, not in check");
    // The suspended level-1 call returns through its retired region; the next
    // call runs the baseline again.
    step(&mut proc, "84");
    step(&mut proc, "42");
    assert!(proc.alive());

    let status = hotpatch_engine::status(proc.pid()).expect("status");
    assert_eq!(status.len(), 1);
    assert!(!status[0].active);
    assert_eq!(status[0].record.region_start, report.retired_region);
    assert_eq!(status[0].record.retired.map(|r| r.replaced_by_level), Some(None));
    // The retired region is still there, read+execute.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", proc.pid())).expect("maps");
    assert!(maps.lines().any(|l| l.contains("/memfd:hotpatch:") && l.contains(" r-xp ")), "{maps}");
}

#[test]
fn level_upgrade_and_rollback_while_coroutines_are_suspended_in_replacements() {
    let co = Coroutine::build();
    let mut proc = co.spawn();
    let (l1, l2) = (co.level(1), co.level(2));
    hotpatch_engine::apply(proc.pid(), &l1, &opts()).expect("apply level 1");
    step(&mut proc, "42");

    // Level 2 replaces level 1 while the coroutine is inside level 1's code.
    let r2 = hotpatch_engine::apply(proc.pid(), &l2, &opts()).expect("apply level 2");
    let replaced = r2.replaced.expect("level 1 replaced");
    assert_eq!(replaced.level, 1);
    step(&mut proc, "84");
    // Now inside level 2's code: roll it back.
    step(&mut proc, "1001");
    hotpatch_engine::rollback(proc.pid(), Some(&l2.manifest.patch_id), &opts()).expect("rollback level 2");
    step(&mut proc, "1001");
    step(&mut proc, "42");
    assert!(proc.alive());

    let status = hotpatch_engine::status(proc.pid()).expect("status");
    let mut retired: Vec<(u32, Option<u32>)> =
        status.iter().filter_map(|a| a.record.retired.map(|r| (a.record.level, r.replaced_by_level))).collect();
    retired.sort();
    assert_eq!(retired, vec![(1, Some(2)), (2, None)]);
    assert!(status.iter().all(|a| !a.active));
    let total = hotpatch_engine::retired_total(&status);
    assert_eq!(total.regions, 2);
    assert_eq!(total.bytes, status.iter().map(|a| a.record.region_size).sum::<u64>());
    assert!(status.iter().any(|a| a.record.region_start == replaced.retired_region));
}

#[test]
fn retired_regions_are_capped_with_a_clear_refusal() {
    let dir = Dir::new();
    let (svc, v2, v3) = build_svc(&dir, true);
    let publisher = Publisher::new();
    let l1 = publisher.package(&svc, &v2, &["check=check_v2"], 1);
    let l2 = publisher.package(&svc, &v3, &["check=check_v3"], 2);
    let proc = Proc::spawn(&svc, &[]);
    proc.expect_line("42", 100);
    let pid = proc.pid();
    for _ in 0..MAX_RETIRED_REGIONS {
        hotpatch_engine::apply(pid, &l1, &opts()).expect("apply");
        hotpatch_engine::rollback(pid, None, &opts()).expect("rollback");
    }
    assert_eq!(retired_region_count(pid), MAX_RETIRED_REGIONS);

    // Applying retires nothing, so it is still allowed...
    hotpatch_engine::apply(pid, &l1, &opts()).expect("apply at the cap");
    proc.expect_line("83", 200);
    // ...but neither a rollback nor a higher level may retire one more region.
    let before = snapshot(pid);
    for result in [
        hotpatch_engine::rollback(pid, None, &opts()).map(|_| ()),
        hotpatch_engine::apply(pid, &l2, &opts()).map(|_| ()),
    ] {
        match result {
            Err(e @ EngineError::RetiredCap { .. }) => {
                let text = e.to_string();
                assert!(text.contains("restart the process"), "{text}");
                assert!(text.contains(&MAX_RETIRED_REGIONS.to_string()), "{text}");
            }
            other => panic!("expected RetiredCap, got {other:?}"),
        }
    }
    assert_eq!(snapshot(pid), before, "a refusal changed the process");
    assert_eq!(live_region_count(pid), 1);
    proc.expect_line("83", 200);
}

fn scanning(timeout: Duration) -> ApplyOptions {
    ApplyOptions { timeout, scan_memory: true }
}

#[test]
fn scan_memory_sees_a_coroutine_inside_the_code_being_replaced() {
    let co = Coroutine::build();
    let mut proc = co.spawn();
    let l1 = co.level(1);
    let before = snapshot(proc.pid());
    // The coroutine is suspended inside the baseline `check`: busy for the whole timeout.
    match hotpatch_engine::apply(proc.pid(), &l1, &scanning(Duration::from_millis(300))) {
        Err(EngineError::Busy { function, .. }) => {
            assert!(function.starts_with("check") && function.contains("--scan-memory"), "{function}")
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(snapshot(proc.pid()), before, "a busy refusal changed the process");
    assert_eq!(region_count(proc.pid()), 0);

    // Without the scan the coroutine is invisible (the default, documented).
    hotpatch_engine::apply(proc.pid(), &l1, &opts()).expect("apply without the scan");
    step(&mut proc, "42");
    match hotpatch_engine::rollback(proc.pid(), None, &scanning(Duration::from_millis(300))) {
        Err(EngineError::Busy { function, .. }) => assert!(function.contains("replacement code"), "{function}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(live_region_count(proc.pid()), 1, "still applied");
    step(&mut proc, "84");
    assert!(proc.alive());
}

#[test]
fn scan_memory_without_user_level_stacks_applies_and_reports_its_cost() {
    let dir = Dir::new();
    let (svc, v2, _) = build_svc(&dir, true);
    let pkg = Publisher::new().package(&svc, &v2, &["check=check_v2"], 1);
    let proc = Proc::spawn(&svc, &[]);
    proc.expect_line("42", 100);
    let report = hotpatch_engine::apply(proc.pid(), &pkg, &scanning(Duration::from_secs(10))).expect("apply");
    proc.expect_line("83", 200);
    let scan = report.memory_scan.expect("scan reported");
    assert!(scan.bytes > 0 && scan.mappings > 0, "{scan:?}");
    eprintln!(
        "memory scan: {} KiB in {} mappings, {} µs; pause {} µs",
        scan.bytes / 1024,
        scan.mappings,
        scan.micros,
        report.pause_us
    );
    let back = hotpatch_engine::rollback(proc.pid(), None, &scanning(Duration::from_secs(10))).expect("rollback");
    assert!(back.memory_scan.is_some());
    proc.expect_line("42", 200);
}

#[test]
fn declared_user_level_stacks_are_checked_by_default() {
    let co = Coroutine::build();
    let mut proc = co.spawn_declaring("stack");
    let l1 = co.declared_level(1);
    let before = snapshot(proc.pid());
    // No --scan-memory: the declared coroutine stack is enough to see it inside check.
    match hotpatch_engine::apply(proc.pid(), &l1, &ApplyOptions { timeout: Duration::from_millis(300), ..opts() }) {
        Err(EngineError::Busy { function, .. }) => {
            assert!(function.starts_with("check") && function.contains("declares"), "{function}")
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(snapshot(proc.pid()), before, "a busy refusal changed the process");
    step(&mut proc, "42");
    assert!(proc.alive());
}

#[test]
fn a_declared_stack_elsewhere_costs_only_its_size() {
    let co = Coroutine::build();
    let mut proc = co.spawn_declaring("empty");
    let report = hotpatch_engine::apply(proc.pid(), &co.declared_level(1), &opts()).expect("apply");
    let scan = report.memory_scan.expect("the declared stack was scanned");
    assert_eq!((scan.bytes, scan.mappings), (4096, 1));
    step(&mut proc, "42");
    step(&mut proc, "84");
}

#[test]
fn a_malformed_declaration_refuses_the_transition() {
    let co = Coroutine::build();
    let proc = co.spawn_declaring("bad");
    let before = snapshot(proc.pid());
    match hotpatch_engine::apply(proc.pid(), &co.declared_level(1), &opts()) {
        Err(e @ EngineError::UserStacks { .. }) => assert!(e.to_string().contains("magic"), "{e}"),
        other => panic!("expected UserStacks, got {other:?}"),
    }
    assert_eq!(snapshot(proc.pid()), before, "a refusal changed the process");
    assert_eq!(region_count(proc.pid()), 0);
}
