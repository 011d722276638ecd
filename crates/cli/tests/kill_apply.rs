//! `hotpatch apply` killed with SIGKILL at spread points of a two-site
//! transition, then `hotpatch repair`: the process lives on, fully patched or
//! untouched, with no patch region left behind that nothing leads to.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Trials per run: 40, or `HOTPATCH_KILL_TRIALS` (e.g. 100 for a longer proof).
fn trials() -> u32 {
    std::env::var("HOTPATCH_KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(40)
}

/// Retired regions before the test starts a fresh process (the cap is 16).
const RESTART_AT: usize = 12;

fn retired_regions(pid: &str) -> usize {
    let status = json(&run(&["--json", "status", "--pid", pid]));
    status.as_array().expect("list").iter().filter(|r| r["retired"].is_object()).count()
}

/// Descriptors of the process that lead to a patch region's memfd.
fn memfds_open(pid: &str) -> Vec<String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list descriptors");
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.starts_with("/memfd:hotpatch:"))
        .collect()
}

// A kill while a thread is borrowed for an injected syscall (memfd_create,
// mmap, mprotect, close) used to leave that thread on the injected registers;
// the engine's syscall stub now brings it back by itself (ARCHITECTURE.md).
#[test]
fn apply_killed_at_any_step_leaves_the_process_whole_after_repair() {
    let f = Fixture::new();
    let pkg = f.path("svc-2.hpatch");
    f.pack(&f.path("svc"), 2, &pkg);
    let mut svc = Svc::start(&f.path("svc"));
    let (mut pid, state) = (svc.pid().to_string(), s(&f.path("state")));
    // How long a whole apply takes here, so the kills spread over all of it.
    let started = std::time::Instant::now();
    json(&run(&["--json", "apply", "--pid", &pid, &s(&pkg), "--trust", &f.trust(), "--state-dir", &state]));
    let whole = started.elapsed();
    assert!(svc.wait_for(LEVEL2));
    json(&run(&["--json", "rollback", "--pid", &pid]));
    let (mut patched, mut repaired_regions, mut restarts) = (0, 0, 0);
    let trials = trials();
    for trial in 0..trials {
        // Each rollback retires a region (it stays mapped); a fresh process
        // before the per-target cap of retired regions is reached.
        if retired_regions(&pid) >= RESTART_AT {
            svc = Svc::start(&f.path("svc"));
            pid = svc.pid().to_string();
            restarts += 1;
        }
        let mut apply = Command::new(HOTPATCH)
            .args(["apply", "--pid", &pid, &s(&pkg), "--trust", &f.trust(), "--state-dir", &state])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("apply");
        // Spread the kill over start-up, mapping, the transition and after.
        let delay = whole * 3 * (trial + 1) / (2 * trials) + Duration::from_micros(200);
        std::thread::sleep(delay);
        let _ = apply.kill();
        let _ = apply.wait();
        if let Ok(Some(end)) = svc.child.try_wait() {
            panic!("trial {trial}: the target ended ({end}) when apply was killed {delay:?} after its start");
        }
        let repaired = json(&run(&["--json", "repair", "--state-dir", &state, "--min-age", "0", "--pid", &pid]));
        assert_eq!(repaired["errors"], serde_json::json!([]), "trial {trial}: {repaired}");
        repaired_regions += repaired["regions"].as_array().map_or(0, Vec::len);
        let status = json(&run(&["--json", "status", "--pid", &pid]));
        let regions = status.as_array().expect("list");
        // Every region is the one applied or a retired one: none mapped that no site leads to.
        let active = regions.iter().filter(|r| r["active"] == true).count();
        assert!(active <= 1, "trial {trial}: {status}");
        assert!(regions.iter().all(|r| r["active"] == true || r["retired"].is_object()), "trial {trial}: {status}");
        if active == 1 {
            patched += 1;
            json(&run(&["--json", "rollback", "--pid", &pid]));
        }
    }
    // Where the kills landed varies with the machine's load; said for the record.
    eprintln!(
        "{trials} trials over {whole:?}: {patched} ended patched, {repaired_regions} region(s) repaired, \
         the rest untouched; {restarts} fresh process(es)"
    );
    // Still alive, running its own code, and patchable.
    json(&run(&["--json", "apply", "--pid", &pid, &s(&pkg), "--trust", &f.trust(), "--state-dir", &state]));
    assert!(svc.wait_for(LEVEL2), "the process no longer runs or cannot be patched");
    // A kill right after memfd_create leaves its descriptor open; the next
    // apply closes such leftovers.
    assert_eq!(memfds_open(&pid), Vec::<String>::new(), "a region's memfd is still open");
    let journal = hotpatch_agent::journal::open_intents(&f.path("state")).expect("journal");
    assert!(journal.is_empty(), "repair closed every intent: {journal:?}");
}

// Kills aimed at the injection itself: `hotpatch apply` is killed as soon as
// it logs its k-th injected syscall (memfd_create, mmap, the mprotects, close),
// so the kill lands while that thread is borrowed, at varying steps.
#[test]
fn apply_killed_while_it_borrows_a_thread_leaves_the_process_whole() {
    let f = Fixture::new();
    let pkg = f.path("svc-2.hpatch");
    f.pack(&f.path("svc"), 2, &pkg);
    let mut svc = Svc::start(&f.path("svc"));
    let (mut pid, state) = (svc.pid().to_string(), s(&f.path("state")));
    let (mut patched, mut killed_after) = (0, std::collections::BTreeMap::new());
    for trial in 0..trials() {
        if retired_regions(&pid) >= RESTART_AT {
            svc = Svc::start(&f.path("svc"));
            pid = svc.pid().to_string();
        }
        let k = trial as usize % 5 + 1;
        let seen = apply_killed_after(&f, &pid, &pkg, &state, "hotpatch_engine::inject=debug", |log| {
            log.filter(|l: &String| l.contains("injecting a syscall")).take(k).count()
        });
        *killed_after.entry(seen).or_insert(0) += 1;
        if let Ok(Some(end)) = svc.child.try_wait() {
            panic!("trial {trial}: the target ended ({end}) when apply was killed after {seen} injected syscalls");
        }
        let repaired = json(&run(&["--json", "repair", "--state-dir", &state, "--min-age", "0", "--pid", &pid]));
        assert_eq!(repaired["errors"], serde_json::json!([]), "trial {trial}: {repaired}");
        let status = json(&run(&["--json", "status", "--pid", &pid]));
        let regions = status.as_array().expect("list");
        let active = regions.iter().filter(|r| r["active"] == true).count();
        assert!(active <= 1, "trial {trial}: {status}");
        assert!(regions.iter().all(|r| r["active"] == true || r["retired"].is_object()), "trial {trial}: {status}");
        if active == 1 {
            patched += 1;
            json(&run(&["--json", "rollback", "--pid", &pid]));
        }
    }
    eprintln!("kills after n injected syscalls (n: trials): {killed_after:?}; {patched} ended patched");
    json(&run(&["--json", "apply", "--pid", &pid, &s(&pkg), "--trust", &f.trust(), "--state-dir", &state]));
    assert!(svc.wait_for(LEVEL2), "the process no longer runs or cannot be patched");
    assert_eq!(memfds_open(&pid), Vec::<String>::new(), "a region's memfd is still open");
}

/// Like the service, but a worker thread calls `check`, which runs for a
/// few hundred milliseconds, in a loop: it is nearly always inside it. The
/// main thread prints the last value at start, then for each line read on
/// stdin once the worker has finished two more rounds since.
const BUSY_SVC_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
int counter = 41;
__attribute__((used)) static const char fixture_tag[] = FIXTURE_TAG;
static volatile unsigned long rounds;
static volatile int last;
static int arg;
__attribute__((noinline)) int check(int x) {
    volatile unsigned long s = 0;
    for (unsigned long i = 0; i < 100000000UL; i++) s += i;
    return x + counter;
}
__attribute__((noinline)) int scale(int x) { return x * 2 + counter; }
static void *worker(void *a) { for (;;) { last = check(arg) * 1000 + scale(arg); rounds++; } return a; }
int main(int argc, char **argv) {
    (void)argv;
    arg = argc;
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    while (rounds == 0) usleep(1000);
    printf("%d\n", last); fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        unsigned long r = rounds;
        while (rounds < r + 2) usleep(1000);
        printf("%d\n", last); fflush(stdout);
    }
}
"#;

// `hotpatch apply` killed while it waits for the busy frame to return (its
// return address redirected to a trampoline): the frame returns through it
// untraced and the process goes on as if nothing happened.
#[test]
fn apply_killed_while_waiting_for_a_busy_frame_leaves_the_process_running() {
    use std::io::Write;
    let f = Fixture::new();
    std::fs::write(f.path("busy.c"), BUSY_SVC_C).expect("write");
    gcc(f.dir.path(), &["-O1", "-pthread", "-fno-ipa-ra", &f.tag(), "-o", "busy", "busy.c"]);
    let pkg = f.path("busy-1.hpatch");
    f.pack(&f.path("busy"), 1, &pkg);
    let mut command = Command::new(f.path("busy"));
    command.stdin(Stdio::piped());
    let mut svc = Svc::start_command(command);
    let mut ask = svc.child.stdin.take().expect("stdin");
    let (pid, state) = (svc.pid().to_string(), s(&f.path("state")));
    let mut patched = false;
    for trial in 0..5 {
        let waiting = apply_killed_after(&f, &pid, &pkg, &state, "hotpatch_engine::transition=debug", |mut log| {
            log.any(|l: String| l.contains("waiting for the busy frame to return"))
        });
        assert!(waiting, "trial {trial}: apply never waited for a busy frame");
        // Two more rounds of the worker since now: the redirected frame
        // returned, through the trampoline, and the next call returned too.
        writeln!(ask, "go").expect("ask");
        let value = svc.next().unwrap_or_else(|| panic!("trial {trial}: the process stopped answering"));
        // The frame may have returned just before the kill, and the switch happened.
        assert!(value == UNPATCHED || value == LEVEL1, "trial {trial}: {value}");
        let tracer = hotpatch_engine::procfs::tracer_of(svc.pid());
        assert_eq!(tracer, Some(0), "trial {trial}: still traced");
        let repaired = json(&run(&["--json", "repair", "--state-dir", &state, "--min-age", "0", "--pid", &pid]));
        assert_eq!(repaired["errors"], serde_json::json!([]), "trial {trial}: {repaired}");
        if value == LEVEL1 {
            patched = true;
            json(&run(&["--json", "rollback", "--pid", &pid]));
        }
    }
    eprintln!("5 kills while waiting for a busy frame; patched before the kill in some: {patched}");
    // No trap left anywhere: an apply that is not killed patches it.
    json(&run(&["--json", "apply", "--pid", &pid, &s(&pkg), "--trust", &f.trust(), "--state-dir", &state]));
    writeln!(ask, "go").expect("ask");
    assert_eq!(svc.next().as_deref(), Some(LEVEL1), "the process no longer runs or was not patched");
}
