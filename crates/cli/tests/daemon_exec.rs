//! Patch at exec through the agent daemon: a program started while the
//! daemon runs, whose `main` calls the patched function at once, prints the
//! patched answer first; and a daemon killed while the new process waits at
//! exec leaves it running, unpatched, to completion.
//!
//! The new process is held in a library constructor until the daemon has
//! caught it (it traces it: `TracerPid`), so that the daemon's exec event
//! cannot come too late for reasons of load: what is tested is what the
//! daemon does once it has the process, not how fast a loaded machine
//! delivers the event.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The service's functions, a `main` that calls them once and exits.
const FIRST_C: &str = r#"
#include <stdio.h>
int counter = 41;
__attribute__((used)) static const char fixture_tag[] = FIXTURE_TAG;
__attribute__((noinline)) int check(int x) { return x + counter; }
__attribute__((noinline)) int scale(int x) { return x * 2 + counter; }
int waitlib_marker(void);
int main(int argc, char **argv) {
    (void)argv;
    printf("%d\n", check(argc) * 1000 + scale(argc) + waitlib_marker());
    return 0;
}
"#;

/// A library whose constructor waits for the file `$GO_FILE`.
const WAITLIB_C: &str = r#"
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void wait_for_go(void) {
    const char *go = getenv("GO_FILE");
    while (go && access(go, F_OK) != 0) usleep(1000);
}
int waitlib_marker(void) { return 0; }
"#;

fn build(f: &Fixture) {
    std::fs::write(f.path("first.c"), FIRST_C).expect("write");
    std::fs::write(f.path("waitlib.c"), WAITLIB_C).expect("write");
    gcc(f.dir.path(), &["-O1", "-fPIC", "-shared", "-o", "libwaitlib.so", "waitlib.c"]);
    let tag = f.tag();
    gcc(
        f.dir.path(),
        &["-O1", "-fno-ipa-ra", &tag, "-o", "first", "first.c", "-L.", "-lwaitlib", "-Wl,-rpath,$ORIGIN"],
    );
}

/// Starts `first` held in its constructor until `go` exists; waits (bounded)
/// until the daemon traces it.
fn start_caught(f: &Fixture, go: &Path, agent: &Agent) -> Svc {
    let mut cmd = Command::new(f.path("first"));
    cmd.env("GO_FILE", go);
    let svc = Svc::spawn(cmd);
    let end = Instant::now() + Duration::from_secs(60);
    while hotpatch_engine::procfs::tracer_of(svc.pid()).unwrap_or(0) == 0 {
        assert!(Instant::now() < end, "the daemon never caught {}; log:\n{}", svc.pid(), agent.log_text());
        std::thread::sleep(Duration::from_millis(1));
    }
    svc
}

fn go(path: &Path) {
    std::fs::write(path, "").expect("let the constructor finish");
}

fn exits_cleanly(svc: &mut Svc) {
    let status = svc.child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

#[test]
fn a_new_process_answers_patched_from_its_first_call_and_a_killed_daemon_leaves_it_running() {
    let f = Fixture::new();
    build(&f);
    let catalog = f.path("catalog");
    std::fs::create_dir(&catalog).expect("mkdir");
    f.pack(&f.path("first"), 1, &catalog.join("first-1.hpatch"));
    let cfg = f.path("agent.toml");
    // Rescans ten minutes apart: only the exec event finds the new process.
    let text = format!(
        "state_dir = {:?}\ntrust_dir = {:?}\ncatalog_dir = {:?}\nrescan_seconds = 600\n",
        s(&f.path("state")),
        f.trust(),
        s(&catalog)
    );
    write_config(&cfg, &text);
    let mut agent = Agent::start(&cfg, &f.path("agent.log"));
    let end = Instant::now() + Duration::from_secs(60);
    while !agent.log_text().contains("every process looked at") {
        assert!(Instant::now() < end, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.log_text().contains("new processes are patched at exec"), "{}", agent.log_text());

    let mut svc = start_caught(&f, &f.path("go-1"), &agent);
    go(&f.path("go-1"));
    assert_eq!(svc.next().as_deref(), Some(LEVEL1), "first answer; log:\n{}", agent.log_text());
    exits_cleanly(&mut svc);
    // Logged once released: the process may have printed and exited first.
    let report = |log: &str| {
        log.lines()
            .find(|l| l.contains("new process seen at its entry point") && l.contains(&format!("pid={}", svc.pid())))
            .map(str::to_owned)
    };
    let end = Instant::now() + Duration::from_secs(60);
    while report(&agent.log_text()).is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = agent.log_text();
    let line = report(&log).unwrap_or_else(|| panic!("no report for {}: {log}", svc.pid()));
    // Caught while its loader maps libraries or while the constructor waits.
    assert!(line.contains("caught=in the dynamic loader") || line.contains("caught=in library constructors"), "{line}");
    assert!(line.contains("patched=true") && line.contains("held=true"), "{line}");
    assert!(line.contains("exec_to_patched_us="), "{line}");

    // Killed while the next one waits at exec: it runs on by itself, unpatched.
    let mut svc = start_caught(&f, &f.path("go-2"), &agent);
    agent.signal(libc::SIGKILL);
    assert_eq!(agent.wait_exit(), None, "killed");
    go(&f.path("go-2"));
    assert_eq!(svc.next().as_deref(), Some(UNPATCHED));
    exits_cleanly(&mut svc);
}
