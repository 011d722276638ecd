//! `hotpatch apply`, `status` and `rollback` through the binary, on a real process.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const HOTPATCH: &str = env!("CARGO_BIN_EXE_hotpatch");

fn run(args: &[&str]) -> Output {
    Command::new(HOTPATCH).args(args).output().expect("run hotpatch")
}

fn gcc(dir: &Path, args: &[&str]) {
    let out = Command::new("gcc").args(args).current_dir(dir).output().expect("gcc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json output")
}

#[test]
fn apply_status_rollback_and_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("svc.c"),
        "#include <unistd.h>\nint counter = 41;\n__attribute__((noinline)) int check(int x) { return x + counter; }\n\
         int main(void) { for (;;) { check(1); usleep(2000); } }\n",
    )
    .unwrap();
    std::fs::write(d.join("fix.c"), "extern int counter;\nint check_v2(int x) { return x - counter; }\n").unwrap();
    gcc(d, &["-O1", "-o", "svc", "svc.c"]);
    gcc(d, &["-c", "-fPIC", "-O2", "fix.c"]);
    let keys = d.join("keys");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    assert!(run(&["keygen", "--out", &s(&keys)]).status.success());
    let pkg = d.join("p.hpatch");
    let packed = run(&[
        "pack",
        "--baseline",
        &s(&d.join("svc")),
        "--payload",
        &s(&d.join("fix.o")),
        "--replace",
        "check=check_v2",
        "--level",
        "1",
        "--classification",
        "security",
        "--key",
        &s(&keys.join("publisher.key")),
        "-o",
        &s(&pkg),
    ]);
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    let child = Killed(Command::new(d.join("svc")).stdout(Stdio::null()).spawn().unwrap());
    let pid = child.0.id().to_string();
    // Let the dynamic loader finish before the maps are compared.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let trust = s(&keys.join("publisher.pub"));

    // An unprivileged user is refused cleanly, and nothing changes.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let maps_before = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let denied = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", HOTPATCH, "apply", "--pid", &pid])
        .args([s(&pkg), "--trust".into(), trust.clone()])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success());
    assert!(err.contains("permission denied"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap(), maps_before);

    let state = s(&d.join("state"));
    let applied = json(&run(&["--json", "apply", "--pid", &pid, &s(&pkg), "--trust", &trust, "--state-dir", &state]));
    assert_eq!(applied["level"], 1);
    assert_eq!(applied["threads"], 1);
    assert!(applied["pause_us"].as_u64().is_some());
    assert_eq!(applied["functions"][0], "check");
    // The apply was journaled: its intent and its outcome.
    let journal = std::fs::read_to_string(d.join("state/journal.jsonl")).expect("journal");
    assert!(journal.lines().next().is_some_and(|l| l.starts_with("{\"intent\"")), "{journal}");
    assert!(journal.lines().nth(1).is_some_and(|l| l.contains("\"ok\":true")), "{journal}");

    let status = json(&run(&["--json", "status", "--pid", &pid]));
    assert_eq!(status[0]["patch_id"], applied["patch_id"]);
    assert_eq!(status[0]["active"], true);
    let all = json(&run(&["--json", "status"]));
    assert!(all.as_array().unwrap().iter().any(|a| a["pid"].as_i64() == pid.parse::<i64>().ok()));

    let back = json(&run(&["--json", "rollback", "--pid", &pid]));
    assert_eq!(back["patch_id"], applied["patch_id"]);
    // The rolled-back region stays mapped, retired: status shows it as such.
    let after = json(&run(&["--json", "status", "--pid", &pid]));
    assert_eq!(after.as_array().map(Vec::len), Some(1), "{after}");
    assert_eq!(after[0]["active"], false);
    assert_eq!(after[0]["region_start"], back["retired_region"]);
    assert!(after[0]["retired"]["at"].as_u64().is_some(), "{after}");
    let table = run(&["status", "--pid", &pid]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("retired (rolled back)") && text.contains("1 retired regions"), "{text}");
}
