//! Fixtures shared by the machine-side tests: a small service compiled with
//! the machine's gcc, signed hotpatches for it, and running copies of it that
//! are killed and reaped when dropped.

#![allow(dead_code)]

pub mod control_plane;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

pub const HOTPATCH: &str = env!("CARGO_BIN_EXE_hotpatch");

/// Prints `check(n) * 1000 + scale(n)` whenever it changes: 42043 unpatched,
/// 43043 with level 1 (check), 43044 with level 2 (check and scale).
pub const SVC_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int counter = 41;
/* Makes each fixture's build-id its own: tests running side by side must not patch each other's processes. */
__attribute__((used)) static const char fixture_tag[] = FIXTURE_TAG;
__attribute__((noinline)) int check(int x) { return x + counter; }
__attribute__((noinline)) int scale(int x) { return x * 2 + counter; }
int main(int argc, char **argv) {
    (void)argv;
    int last = -1;
    for (;;) {
        int v = check(argc) * 1000 + scale(argc);
        if (v != last) { printf("%d\n", v); fflush(stdout); last = v; }
        usleep(2000);
    }
}
"#;

pub const FIX_C: &str = r#"
extern int counter;
int check_v2(int x) { return x + counter + 1; }
int scale_v2(int x) { return x * 2 + counter + 2; }
"#;

pub const UNPATCHED: &str = "42043";
pub const LEVEL1: &str = "43043";
pub const LEVEL2: &str = "43045";

pub fn run(args: &[&str]) -> Output {
    Command::new(HOTPATCH).args(args).output().expect("run hotpatch")
}

pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn gcc(dir: &Path, args: &[&str]) {
    let out = Command::new("gcc").args(args).current_dir(dir).output().expect("gcc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// Builds the service and the fix, makes a publisher key and a root-owned
    /// trust directory holding its public half.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Fixture { dir };
        std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(f.path("svc.c"), SVC_C).expect("write");
        std::fs::write(f.path("fix.c"), FIX_C).expect("write");
        gcc(f.dir.path(), &["-O1", "-fno-ipa-ra", &f.tag(), "-o", "svc", "svc.c"]);
        gcc(f.dir.path(), &["-c", "-fPIC", "-O2", "fix.c"]);
        assert!(run(&["keygen", "--out", &s(&f.path("keys"))]).status.success());
        let trust = f.path("trusted-keys");
        std::fs::create_dir(&trust).expect("mkdir");
        std::fs::set_permissions(&trust, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::copy(f.path("keys/publisher.pub"), trust.join("publisher.pub")).expect("copy");
        f
    }

    /// `-DFIXTURE_TAG="<this fixture's directory>"`, for sources that embed it.
    pub fn tag(&self) -> String {
        format!("-DFIXTURE_TAG={:?}", s(self.dir.path()))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn trust(&self) -> String {
        s(&self.path("trusted-keys"))
    }

    /// Packs level 1 (`check`) or 2 (`check` and `scale`) for `baseline` into `out`.
    pub fn pack(&self, baseline: &Path, level: u32, out: &Path) {
        self.pack_with(baseline, level, out, &self.path("keys/publisher.key"));
    }

    /// [`Fixture::pack`] signed with the secret key at `key`.
    pub fn pack_with(&self, baseline: &Path, level: u32, out: &Path, key: &Path) {
        let mut args = vec!["pack".to_string(), "--baseline".into(), s(baseline), "--payload".into()];
        args.push(s(&self.path("fix.o")));
        args.extend(["--replace".into(), "check=check_v2".into()]);
        if level >= 2 {
            args.extend(["--replace".into(), "scale=scale_v2".into()]);
        }
        let level = level.to_string();
        args.extend(["--level".into(), level, "--classification".into(), "security".into()]);
        args.extend(["--cve".into(), "CVE-2026-1234".into(), "--key".into(), s(key)]);
        args.extend(["-o".into(), s(out)]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let packed = run(&refs);
        assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    }
}

/// A running service; its printed values arrive on a channel. Killed and
/// reaped when dropped.
pub struct Svc {
    pub child: Child,
    lines: Receiver<String>,
}

/// How long a test waits for a value before it gives up (a bound against
/// hanging, not a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

impl Svc {
    /// Starts `exe` and waits for its first value (the loader is done then).
    pub fn start(exe: &Path) -> Svc {
        Svc::start_command(Command::new(exe))
    }

    /// Starts a command whose output is the service's (e.g. the service under a tracer).
    pub fn start_command(command: Command) -> Svc {
        Svc::start_command_first(command, UNPATCHED)
    }

    /// Starts a command and waits for its first value, which must be `first`.
    pub fn start_command_first(command: Command, first: &str) -> Svc {
        let svc = Svc::spawn(command);
        assert_eq!(svc.next().as_deref(), Some(first));
        svc
    }

    /// Starts a command without reading anything yet: a process started
    /// while the agent runs may be patched before its first value (at exec).
    pub fn spawn(mut command: Command) -> Svc {
        let mut child = command.stdout(Stdio::piped()).spawn().expect("start service");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Svc { child, lines }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn next(&self) -> Option<String> {
        // Timeout or disconnect (the process ended) alike: no value.
        self.lines.recv_timeout(PATIENCE).ok()
    }

    /// Reads values until `want`; false if the process ended or went quiet first.
    pub fn wait_for(&self, want: &str) -> bool {
        while let Some(v) = self.next() {
            if v == want {
                return true;
            }
        }
        false
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a root-only configuration file for the agent.
pub fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// The agent daemon; stopped with SIGKILL and reaped if a test fails before stopping it.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(config: &Path, log: &Path) -> Agent {
        let level = std::env::var("TEST_AGENT_LOG").unwrap_or_else(|_| "info".into());
        Agent::start_logging(config, log, &level)
    }

    /// Starts the agent with `HOTPATCH_LOG=level`.
    pub fn start_logging(config: &Path, log: &Path, level: &str) -> Agent {
        let err = std::fs::File::create(log).expect("log file");
        // TEST_AGENT_LOG=debug shows more in the log a failing test prints.
        let child = Command::new(HOTPATCH)
            .args(["agent", "--config", &s(config)])
            .env("HOTPATCH_LOG", level)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start agent");
        Agent { child, log: log.to_path_buf() }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits (bounded) for the agent to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the agent did not stop within a minute; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The patch region headers of a process, in address order, read as the
/// engine writes them.
pub fn region_headers(pid: i32) -> Vec<hotpatch_engine::region::RegionHeader> {
    use hotpatch_engine::procfs::{self, ProcessMemory};
    use hotpatch_engine::region::{RegionHeader, is_region_mapping};
    let maps = procfs::maps(pid).expect("maps");
    let mem = ProcessMemory::open(pid, false).expect("mem");
    maps.iter()
        .filter(|m| is_region_mapping(m))
        .map(|m| {
            let len = RegionHeader::encoded_len(&mem.read_vec(m.start, 12).expect("read")).expect("magic");
            RegionHeader::decode(&mem.read_vec(m.start, len).expect("read")).expect("header")
        })
        .collect()
}

pub fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// Starts `hotpatch apply` on `pid` with the engine's `log` filter, hands its
/// log lines to `watch` (which reads as far as it needs), then SIGKILLs it:
/// an apply killed at the step `watch` waited for.
pub fn apply_killed_after<R>(
    f: &Fixture,
    pid: &str,
    package: &Path,
    state: &str,
    log: &str,
    watch: impl FnOnce(Box<dyn Iterator<Item = String>>) -> R,
) -> R {
    let mut apply = Command::new(HOTPATCH)
        .args(["apply", "--pid", pid, &s(package), "--trust", &f.trust(), "--state-dir", state])
        .env("HOTPATCH_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("apply");
    let stderr = BufReader::new(apply.stderr.take().expect("stderr"));
    let seen = watch(Box::new(stderr.lines().map_while(Result::ok)));
    let _ = apply.kill();
    let _ = apply.wait();
    seen
}
