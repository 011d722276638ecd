//! Patch at exec: a process caught on its way to its entry point is patched
//! before any of its own code runs, so the very first answer of a program
//! whose `main` calls the patched function at once is already the patched
//! one. And a tracer that dies while the process waits leaves a process that
//! runs on, unpatched, to completion.
//!
//! The race with the new process is taken out of the test, not left to
//! timing: the child is caught from where an exec leaves it (stopped before
//! its first instruction), which the catch must lead to the entry point
//! through the loader like any other.

mod common;

use common::*;
use hotpatch_engine::startup::{self, Abandon, Caught, NeededCache, Stage};
use hotpatch_engine::{ApplyOptions, apply};
use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const FIRST: &str = r#"
#include <stdio.h>
int counter = 41;
__attribute__((noinline)) int check(int x) { return x + counter; }
int main(void) { printf("%d\n", check(1)); return 0; }
"#;

/// Generous: the bound of a wait for a process that is not stuck.
fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(10), ..ApplyOptions::default() }
}

/// Spawns `program` stopped right after its exec, before any instruction of
/// it ran (where a process stands when an exec event comes at once): traced
/// through the exec (`PTRACE_TRACEME`), then let go with `SIGSTOP`.
fn spawn_stopped_at_exec(program: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(program);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: one async-signal-safe syscall between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proc = Proc::from_command(cmd);
    let pid = proc.pid();
    let stopped_by = |flags: i32| {
        let mut status = 0;
        // SAFETY: waitpid writes one int.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        assert_eq!(ret, pid, "waitpid: {}", std::io::Error::last_os_error());
        assert!(libc::WIFSTOPPED(status), "status {status:x}");
        libc::WSTOPSIG(status)
    };
    assert_eq!(stopped_by(libc::__WALL), libc::SIGTRAP, "the exec's trap");
    // SAFETY: plain syscall on our own tracee.
    assert_eq!(unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, libc::SIGSTOP as usize) }, 0);
    assert_eq!(stopped_by(libc::WUNTRACED), libc::SIGSTOP);
    proc
}

/// Lets the stopped process go on (a no-op for one that runs).
fn unleash(pid: i32) {
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

fn exits_cleanly(proc: &mut Proc) {
    let status = proc.child.wait().expect("wait for the fixture");
    assert!(status.success(), "fixture ended with {status}");
}

/// Catches the new process, applies `pkg` while it is held, releases it.
fn patch_at_exec(proc: &Proc, pkg: &hotpatch_format::VerifiedPackage) -> Stage {
    let caught = startup::catch(proc.pid(), deadline()).expect("catch");
    unleash(proc.pid());
    let Caught::Held(held) = caught else { panic!("not caught before its entry: {caught:?}") };
    let stage = held.stage;
    apply(proc.pid(), pkg, &opts()).expect("apply while held");
    assert!(held.release().expect("release"), "the hold ended before the release");
    stage
}

#[test]
fn the_first_answer_of_a_new_process_is_already_patched() {
    let dir = Dir::new();
    dir.write("first.c", FIRST);
    dir.write("fix_v3.c", FIX_V3);
    dir.gcc(&["-O1", "-g0", "-o", "first", "first.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "-ffunction-sections", "fix_v3.c"]);
    let pkg = Publisher::new().package(&dir.path("first"), &dir.path("fix_v3.o"), &["check=check_v3"], 1);

    let mut proc = spawn_stopped_at_exec(&dir.path("first"), &[]);
    let stage = patch_at_exec(&proc, &pkg);
    assert_eq!(stage, Stage::Loader, "caught while its loader maps libraries");
    proc.expect_line("1001", 1);
    exits_cleanly(&mut proc);
    assert_no_thread_traced(proc.pid());

    // Without the catch, the same program answers unpatched.
    let mut plain = Proc::spawn(&dir.path("first"), &[]);
    plain.expect_line("42", 1);
    exits_cleanly(&mut plain);
}

#[test]
fn a_library_target_is_patched_before_main_calls_it() {
    let dir = Dir::new();
    dir.write("lib.c", "__attribute__((noinline)) int lib_check(int x) { return x * 10 + 2; }\n");
    dir.write(
        "main.c",
        "#include <stdio.h>\nint lib_check(int);\nint main(void){ printf(\"%d\\n\", lib_check(4)); return 0; }\n",
    );
    dir.write("fix.c", "int lib_check_v2(int x) { return x * 100; }\n");
    dir.gcc(&["-O1", "-shared", "-fPIC", "-o", "libdemo.so", "lib.c"]);
    dir.gcc(&["-O1", "-o", "main", "main.c", "-L.", "-ldemo"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix.c"]);
    let pkg = Publisher::new().package(&dir.path("libdemo.so"), &dir.path("fix.o"), &["lib_check=lib_check_v2"], 1);
    let libdir = dir.0.path().to_string_lossy().into_owned();

    let mut proc = spawn_stopped_at_exec(&dir.path("main"), &[("LD_LIBRARY_PATH", &libdir)]);
    // Told from the files alone, before the loader has mapped the library.
    let targets = HashSet::from([pkg.manifest.target.build_id.clone()]);
    let found = NeededCache::default().target_of(proc.pid(), &targets).expect("the library is found as ld.so would");
    assert_eq!(found.path, format!("{libdir}/libdemo.so"));
    patch_at_exec(&proc, &pkg);
    proc.expect_line("400", 1);
    exits_cleanly(&mut proc);
    assert_no_thread_traced(proc.pid());
}

/// A tracer that dies at any step of the catch (a thread of this test that
/// ends without letting go: the kernel detaches its tracees exactly as when
/// a killed daemon exits) leaves a process that runs to completion,
/// unpatched. The hold's sleep (2 s) ends by itself: one trial of it.
#[test]
fn a_tracer_dying_while_the_new_process_waits_leaves_it_running() {
    let dir = Dir::new();
    dir.write("first.c", FIRST);
    dir.gcc(&["-O1", "-g0", "-o", "first", "first.c"]);
    let steps = [Abandon::Planted, Abandon::Running, Abandon::AtEntry];
    let trials = steps.iter().flat_map(|&s| std::iter::repeat_n(s, 8)).chain([Abandon::Holding]);
    for (n, at) in trials.enumerate() {
        let mut proc = spawn_stopped_at_exec(&dir.path("first"), &[]);
        let pid = proc.pid();
        let started = Instant::now();
        let caught = std::thread::spawn(move || startup::catch_abandoning(pid, deadline(), at).expect("catch"))
            .join()
            .expect("tracer thread");
        unleash(pid);
        proc.expect_line("42", 1);
        exits_cleanly(&mut proc);
        assert_no_thread_traced(pid);
        let outcome = match &caught {
            Caught::Held(h) => {
                // Its sleep ended by itself: at least that long (a lower bound, not a timing).
                assert!(started.elapsed() >= startup::HOLD, "held, yet ran before its hold ended");
                format!("held {}", h.stage)
            }
            Caught::Running(why) => why.clone(),
        };
        eprintln!("trial {n} ({at:?}: {outcome}): ran to completion in {:?}", started.elapsed());
    }
}
