//! One process the daemon cannot patch (held by another tracer, as under a
//! debugger) does not stop the others; it is retried with back-off and
//! patched once the tracer lets go.

mod common;

use std::process::Command;

use common::*;

/// Runs its arguments as a traced child and keeps it running: the child
/// cannot be attached by anyone else while this lives.
const TRACER_C: &str = r#"
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    pid_t child = fork();
    if (child == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        execv(argv[1], argv + 1);
        _exit(127);
    }
    int status;
    while (waitpid(child, &status, 0) == child) {
        if (WIFEXITED(status) || WIFSIGNALED(status)) return 0;
        int sig = WIFSTOPPED(status) ? WSTOPSIG(status) : 0;
        ptrace(PTRACE_CONT, child, 0, sig == SIGTRAP ? 0 : sig);
    }
    return 0;
}
"#;

/// Kills a process this test did not spawn directly (the tracer's child).
struct KillOnDrop(i32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a pid this test made; it is reaped by init once its tracer is gone.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

fn only_child(pid: i32) -> i32 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).expect("children");
    text.split_whitespace().next().and_then(|c| c.parse().ok()).expect("the tracer has a child")
}

#[test]
fn a_process_that_cannot_be_patched_does_not_stop_the_others_and_is_retried() {
    let f = Fixture::new();
    std::fs::write(f.path("tracer.c"), TRACER_C).expect("write");
    gcc(f.dir.path(), &["-O1", "-o", "tracer", "tracer.c"]);
    let catalog = f.path("catalog");
    std::fs::create_dir(&catalog).expect("mkdir");
    f.pack(&f.path("svc"), 1, &catalog.join("svc-1.hpatch"));
    let cfg = f.path("agent.toml");
    let text = format!(
        "state_dir = {:?}\ntrust_dir = {:?}\ncatalog_dir = {:?}\nrescan_seconds = 0.2\nmax_attempts = 20\nretry_max_seconds = 1\n",
        s(&f.path("state")),
        f.trust(),
        s(&catalog)
    );
    write_config(&cfg, &text);

    let free = Svc::start(&f.path("svc"));
    let mut traced_cmd = Command::new(f.path("tracer"));
    traced_cmd.arg(f.path("svc"));
    let mut tracer = Svc::start_command(traced_cmd);
    let traced = KillOnDrop(only_child(tracer.pid()));

    let agent = Agent::start(&cfg, &f.path("agent.log"));
    assert!(free.wait_for(LEVEL1), "log:\n{}", agent.log_text());
    // The traced process is refused and retried, the reason in the log.
    let mut seen = false;
    for _ in 0..600 {
        let log = agent.log_text();
        if log.contains(&format!("already being traced by process {}", tracer.pid())) && log.contains("retry=true") {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seen, "no retryable refusal logged:\n{}", agent.log_text());
    // The tracer goes away (the debugger detaches): the next retry patches it.
    let _ = tracer.child.kill();
    let _ = tracer.child.wait();
    assert!(tracer.wait_for(LEVEL1), "the traced process was not patched once free; log:\n{}", agent.log_text());
    drop(traced);
}
