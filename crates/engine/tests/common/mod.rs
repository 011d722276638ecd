//! Shared harness for live tests: C fixtures built with the machine's gcc,
//! processes that are always killed, packages signed with a fresh key.
#![allow(dead_code)]

use hotpatch_build::{PackRequest, Replacement, manifest_for, parse_replacement};
use hotpatch_format::{Classification, Manifest, Package, SecretKey, TrustStore, VerifiedPackage};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

pub struct Dir(pub tempfile::TempDir);

impl Dir {
    pub fn new() -> Dir {
        Dir(tempfile::tempdir().expect("tempdir"))
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write source");
        p
    }
    /// Runs gcc with `args` in this directory; panics with gcc's output on failure.
    pub fn gcc(&self, args: &[&str]) {
        let out = Command::new("gcc").args(args).current_dir(self.0.path()).output().expect("run gcc");
        assert!(out.status.success(), "gcc {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A running fixture; killed and reaped on drop so no test leaves it behind.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
}

impl Proc {
    pub fn spawn(program: &Path, env: &[(&str, &str)]) -> Proc {
        Proc::spawn_args(program, &[], env)
    }

    pub fn spawn_args(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_with(program, args, env, Stdio::inherit())
    }

    /// A fixture driven through its stdin: see [`Proc::send`].
    pub fn spawn_driven(program: &Path, env: &[(&str, &str)]) -> Proc {
        Proc::spawn_with(program, &[], env, Stdio::piped())
    }

    /// Writes one line to the fixture's stdin (spawned with [`Proc::spawn_driven`]).
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("fixture spawned with spawn_driven");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("write to fixture");
    }

    fn spawn_with(program: &Path, args: &[&str], env: &[(&str, &str)], stdin: Stdio) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd.stdin(stdin);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::from_command(cmd)
    }

    /// Spawns `cmd` as prepared by the caller, its stdout read line by line.
    pub fn from_command(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn fixture");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines: rx }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads lines until one equals `want`; panics after `max_lines` or 20 s of silence.
    /// Any line starting with FAIL (a fixture thread saw an error) fails the test.
    pub fn expect_line(&self, want: &str, max_lines: usize) {
        for _ in 0..max_lines {
            let line = self.lines.recv_timeout(Duration::from_secs(20)).expect("fixture went silent");
            assert!(!line.starts_with("FAIL"), "fixture reported: {line}");
            if line == want {
                return;
            }
        }
        panic!("fixture never printed {want:?} within {max_lines} lines");
    }

    /// What the fixture prints during the next half second (bounded: it prints forever).
    pub fn drain(&self) -> Vec<String> {
        let end = std::time::Instant::now() + Duration::from_millis(500);
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(_) => break,
            }
        }
        out
    }

    /// The next line, waiting at most a second.
    pub fn drain_one(&self) -> Option<String> {
        self.lines.recv_timeout(Duration::from_secs(1)).ok()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // Bounded: a thread left traced by this process (an engine bug) would
        // keep the killed process from ever being reaped.
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < end {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("process {} could not be reaped: a thread of it is still traced by this test", self.child.id());
    }
}

pub struct Publisher {
    pub key: SecretKey,
}

impl Publisher {
    pub fn new() -> Publisher {
        Publisher { key: SecretKey::generate().expect("key") }
    }

    pub fn trust(&self) -> TrustStore {
        TrustStore::from_keys([self.key.public()])
    }

    pub fn manifest(&self, baseline: &Path, payload: &Path, replace: &[&str], level: u32) -> Manifest {
        let base = std::fs::read(baseline).expect("read baseline");
        let obj = std::fs::read(payload).expect("read payload");
        let replacements: Vec<Replacement> = replace.iter().map(|r| parse_replacement(r).expect("spec")).collect();
        let name = baseline.file_name().unwrap().to_string_lossy().into_owned();
        manifest_for(&PackRequest {
            baseline: &base,
            baseline_name: name.clone(),
            debug_file: None,
            payload: &obj,
            replacements,
            patch_id: Some(format!("{}-l{level}", name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))),
            product: name,
            level,
            classification: Classification::Security,
            cves: vec!["CVE-2026-0001".into()],
            description: "test".into(),
            created: "2026-11-29T00:00:00Z".into(),
            allow_ipa_ra: false,
        })
        .expect("manifest")
    }

    /// Signs `manifest` with `payload` and verifies it as a machine would.
    pub fn sign(&self, manifest: Manifest, payload: &Path) -> VerifiedPackage {
        let obj = std::fs::read(payload).expect("read payload");
        let bytes = Package::build(manifest, &obj, &self.key).expect("build package");
        hotpatch_format::verify(&bytes, &self.trust()).expect("verify")
    }

    pub fn package(&self, baseline: &Path, payload: &Path, replace: &[&str], level: u32) -> VerifiedPackage {
        self.sign(self.manifest(baseline, payload, replace, level), payload)
    }
}

/// Everything of a process a refused patch must leave as it was: its
/// mappings and the bytes of every executable mapping of a file, except the
/// unused tail of a segment's last page where the syscall stub and return
/// trampolines go (`hotpatch_engine::stub`: they stay, for a killed tracer's
/// thread).
pub fn snapshot(pid: i32) -> (String, Vec<Vec<u8>>) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mem = hotpatch_engine::procfs::ProcessMemory::open(pid, false).expect("mem");
    let parsed = hotpatch_engine::procfs::parse_maps(&maps);
    let tail = hotpatch_engine::stub::tail(pid, &parsed, &mem);
    let text = parsed
        .iter()
        // Patch regions are named /memfd:hotpatch:...; their bytes are ours,
        // and whether one appeared shows in the maps.
        .filter(|m| m.exec && m.path.starts_with('/') && !m.path.starts_with("/memfd:"))
        .map(|m| {
            let mut bytes = mem.read_vec(m.start, m.len() as usize).expect("read text");
            if let Some(tail) = tail.as_ref().filter(|t| m.contains(t.start)) {
                let from = (tail.start - m.start) as usize;
                let to = ((tail.end - m.start) as usize).min(bytes.len());
                bytes[from..to].fill(0);
            }
            bytes
        })
        .collect();
    (maps, text)
}

pub const SVC: &str = r#"
#include <stdio.h>
#include <unistd.h>
int counter = 41;
__attribute__((noinline)) int check(int x) { return x + counter; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) { printf("%d\n", check(1)); usleep(5000); }
}
"#;

/// Calls libc (snprintf, strlen: an IFUNC in glibc) and reads the target's global.
pub const FIX_V2: &str = r#"
#include <stdio.h>
#include <string.h>
extern int counter;
int check_v2(int x) {
    char buf[32];
    snprintf(buf, sizeof buf, "%d", counter);
    return x + counter * 2 + (int)strlen(buf) - 2;
}
"#;

pub const FIX_V3: &str = "int check_v3(int x) { return 1000 + x; }\n";

/// Builds the standard service and both fixes; returns (svc, fix_v2.o, fix_v3.o).
pub fn build_svc(dir: &Dir, pie: bool) -> (PathBuf, PathBuf, PathBuf) {
    dir.write("svc.c", SVC);
    dir.write("fix_v2.c", FIX_V2);
    dir.write("fix_v3.c", FIX_V3);
    let mut args = vec!["-O1", "-g0", "-o", "svc", "svc.c"];
    if !pie {
        args.insert(0, "-no-pie");
    }
    dir.gcc(&args);
    dir.gcc(&["-c", "-fPIC", "-O2", "-ffunction-sections", "fix_v2.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "-ffunction-sections", "fix_v3.c"]);
    (dir.path("svc"), dir.path("fix_v2.o"), dir.path("fix_v3.o"))
}

pub fn region_count(pid: i32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().filter(|l| l.contains("/memfd:hotpatch:") && l.contains(" 00000000 ")).count())
        .unwrap_or(0)
}

/// Patch regions of `pid` that are applied (not retired).
pub fn live_region_count(pid: i32) -> usize {
    hotpatch_engine::status(pid).expect("status").iter().filter(|a| a.record.retired.is_none()).count()
}

/// Patch regions of `pid` that are retired (still mapped, no longer applied).
pub fn retired_region_count(pid: i32) -> usize {
    hotpatch_engine::status(pid).expect("status").iter().filter(|a| a.record.retired.is_some()).count()
}

/// `/proc/PID/maps` without patch regions (retired ones stay mapped).
pub fn maps_without_regions(maps: &str) -> String {
    maps.lines().filter(|l| !l.contains("/memfd:hotpatch:")).map(|l| format!("{l}\n")).collect()
}

/// Every thread of `pid` that still exists: not traced by anyone and not left
/// in a tracing stop. Threads that exit while we look are skipped; a thread
/// of a process that is being killed may still show its tracer for a moment,
/// so offenders get a few seconds to end or be let go (a bound, not a timing).
pub fn assert_no_thread_traced(pid: i32) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let offenders = traced_threads(pid);
        if offenders.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < end, "threads of {pid} left traced or stopped: {offenders:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Threads of `pid` (not ended) that are traced or in a tracing stop: (tid, tracer, state).
fn traced_threads(pid: i32) -> Vec<(String, String, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut offenders = Vec::new();
    for entry in dir.flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default()
        };
        let state = field("State:");
        if state.starts_with('Z') || state.starts_with('X') {
            // Ended: whether it can be reaped is checked by reaping it.
            continue;
        }
        let tracer = field("TracerPid:");
        if tracer != "0" || state.starts_with('t') || state.starts_with('T') {
            offenders.push((entry.file_name().to_string_lossy().into_owned(), tracer, state));
        }
    }
    offenders
}
