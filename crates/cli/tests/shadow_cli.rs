//! `hotpatch pack` of a hand-written fix that uses include/hotpatch.h (a
//! shadow variable, callbacks), applied to a running service and rolled back
//! through the binary; a refusing pre-apply callback through the binary.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};

const HOTPATCH: &str = env!("CARGO_BIN_EXE_hotpatch");

/// Answers each stdin line (a session number) with `serve`'s result.
const SERVICE: &str = r#"
#include <stdio.h>
struct session { int id; char name[12]; };
struct session sessions[8];
int greeting = 1;
/* name[] is all zero: the sum is the id. */
__attribute__((noinline)) int serve(struct session *s) { return s->id + s->name[0]; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < 8; i++) sessions[i].id = i;
    int n;
    while (scanf("%d", &n) == 1) printf("%d %d\n", serve(&sessions[n & 7]), greeting);
    return 0;
}
"#;

/// Counts each session's requests in a field `struct session` does not have.
const FIX: &str = r#"
#include <hotpatch.h>
struct session { int id; char name[12]; };
extern int greeting;
int serve_v2(struct session *s) {
    int *hits = hotpatch_shadow_get_or_alloc(s, 42, sizeof *hits);
    return hits ? 100 * ++*hits + s->id : -1;
}
void hotpatch_post_apply(void) { greeting = 2; }
void hotpatch_post_rollback(void) { greeting = 1; }
"#;

const REFUSING: &str = r#"
#include <hotpatch.h>
struct session;
int serve_bad(struct session *s) { (void)s; return -9; }
int hotpatch_pre_apply(void) { return 4; }
"#;

/// A pre-apply callback that takes its time: long enough to kill the tracer
/// while the borrowed thread is inside it.
const SLOW: &str = r#"
#include <hotpatch.h>
#include <unistd.h>
struct session;
int serve_slow(struct session *s) { (void)s; return -7; }
int hotpatch_pre_apply(void) { usleep(1500000); return 0; }
"#;

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env { dir: tempfile::tempdir().expect("tempdir") };
        std::fs::write(env.path("service.c"), SERVICE).unwrap();
        std::fs::write(env.path("fix.c"), FIX).unwrap();
        std::fs::write(env.path("refusing.c"), REFUSING).unwrap();
        std::fs::write(env.path("slow.c"), SLOW).unwrap();
        let include = format!("-I{}", include_dir().display());
        env.run("gcc", &["-O2", "-fno-ipa-ra", "-o", "service", "service.c"]);
        env.run("gcc", &["-c", "-fPIC", "-O2", &include, "fix.c", "refusing.c", "slow.c"]);
        ok(env.command(HOTPATCH, &["keygen", "--out", "keys"]), "keygen");
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program).args(args).current_dir(self.dir.path()).output().expect("run")
    }

    fn run(&self, program: &str, args: &[&str]) {
        ok(self.command(program, args), program);
    }

    fn pack(&self, payload: &str, replace: &str, out: &str) {
        let args = [
            "pack",
            "--baseline",
            "service",
            "--payload",
            payload,
            "--replace",
            replace,
            "--level",
            "1",
            "--classification",
            "security",
            "--key",
            "keys/publisher.key",
            "-o",
            out,
        ];
        ok(self.command(HOTPATCH, &args), "pack");
    }

    fn start(&self) -> Service {
        let mut child = Command::new(self.path("service"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start service");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Service { child, stdin, stdout }
    }
}

struct Service {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Service {
    fn ask(&mut self, session: u32) -> String {
        writeln!(self.stdin, "{session}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_packed_fix_adds_a_per_session_counter_and_rollback_drops_it() {
    let env = Env::new();
    env.pack("fix.o", "serve=serve_v2", "fix.hpatch");
    let inspect = ok(env.command(HOTPATCH, &["--json", "inspect", "fix.hpatch"]), "inspect");
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("json");
    assert_eq!(inspect["callbacks"], serde_json::json!(["hotpatch_post_apply", "hotpatch_post_rollback"]));
    assert_eq!(inspect["shadow_variables"], true);
    let mut svc = env.start();
    assert_eq!(svc.ask(3), "3 1");
    let pid = svc.pid();
    let apply = ["--json", "apply", "--pid", &pid, "fix.hpatch", "--trust", "keys/publisher.pub"];
    let applied = ok(env.command(HOTPATCH, &apply), "apply");
    let report: serde_json::Value = serde_json::from_slice(&applied.stdout).expect("json");
    assert!(report.to_string().contains("\"pause_us\""), "{report}");
    assert!(!report.to_string().contains("callback_problem"), "{report}");
    assert_eq!(svc.ask(3), "103 2");
    assert_eq!(svc.ask(3), "203 2");
    assert_eq!(svc.ask(5), "105 2");
    let status = ok(env.command(HOTPATCH, &["status", "--pid", &pid]), "status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains(": 2 objects, 8 bytes"), "{status}");
    ok(env.command(HOTPATCH, &["rollback", "--pid", &pid]), "rollback");
    assert_eq!(svc.ask(3), "3 1");
    // Applied again: a new table, counting from one.
    ok(env.command(HOTPATCH, &apply), "apply again");
    assert_eq!(svc.ask(3), "103 2");
}

#[test]
fn a_refusing_pre_apply_callback_fails_the_apply_with_its_reason() {
    let env = Env::new();
    env.pack("refusing.o", "serve=serve_bad", "refusing.hpatch");
    let mut svc = env.start();
    assert_eq!(svc.ask(2), "2 1");
    let pid = svc.pid();
    let out = env.command(HOTPATCH, &["apply", "--pid", &pid, "refusing.hpatch", "--trust", "keys/publisher.pub"]);
    assert!(!out.status.success(), "applied");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("hotpatch_pre_apply") && said.contains("returned 4"), "{said}");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("hotpatch:"), "a region stayed mapped:\n{maps}");
    assert_eq!(svc.ask(2), "2 1");
}

/// `hotpatch apply` killed while a callback runs in the borrowed thread: the
/// callback returns into the injection stub, which gives the thread back its
/// own registers and stack, so the process goes on serving, unpatched.
#[test]
fn apply_killed_inside_a_callback_leaves_the_process_running() {
    let env = Env::new();
    env.pack("slow.o", "serve=serve_slow", "slow.hpatch");
    let mut svc = env.start();
    assert_eq!(svc.ask(4), "4 1");
    let pid = svc.pid();
    let mut apply = Command::new(HOTPATCH)
        .args(["apply", "--pid", &pid, "slow.hpatch", "--trust", "keys/publisher.pub"])
        .current_dir(env.path(""))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("apply");
    // The pre-apply callback sleeps 1.5 s once the region is mapped.
    std::thread::sleep(std::time::Duration::from_millis(700));
    apply.kill().expect("kill apply");
    let _ = apply.wait();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(svc.child.try_wait().expect("try_wait").is_none(), "the service died");
    assert_eq!(svc.ask(4), "4 1", "still the unpatched service");
}
