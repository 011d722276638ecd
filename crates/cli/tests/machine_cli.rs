//! The operator's machine commands through the binary: `readiness`, and the
//! trust directory as `apply` sees it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HOTPATCH: &str = env!("CARGO_BIN_EXE_hotpatch");

fn run(args: &[&str]) -> Output {
    Command::new(HOTPATCH).args(args).output().expect("run hotpatch")
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A root-owned trust directory holding one freshly made publisher key.
fn trust_dir(root: &Path) -> PathBuf {
    let keys = root.join("keys");
    assert!(run(&["keygen", "--out", &s(&keys)]).status.success());
    let dir = root.join("trusted-keys");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::copy(keys.join("publisher.pub"), dir.join("publisher.pub")).expect("copy key");
    dir
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == name)).expect("check listed")
}

#[test]
fn readiness_reports_each_prerequisite_and_exits_by_the_verdict() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let trust = trust_dir(tmp.path());
    let state = tmp.path().join("state");
    let out = run(&["readiness", "--json", "--trust", &s(&trust), "--state-dir", &s(&state)]);
    let report = json(&out);
    assert!(out.status.success(), "{report}");
    assert_eq!(report["ready"], true, "{report}");
    for name in ["architecture", "kernel", "privileges", "ptrace-scope", "proc", "proc-mem", "memfd", "trust"] {
        assert_eq!(check(&report, name)["state"], "ok", "{name}: {report}");
        assert_eq!(check(&report, name)["required"], true, "{name}");
    }
    // This machine exposes no UEFI: reported as not available, not failed.
    for name in ["uefi", "secure-boot", "lockdown"] {
        let state = check(&report, name)["state"].as_str().unwrap_or_default().to_string();
        assert!(state == "not-available" || state == "ok", "{name}: {state}");
    }
    assert_eq!(check(&report, "server")["state"], "warning");
    assert!(report["kernel_livepatches"].is_array());

    let missing = tmp.path().join("no-such-dir");
    let out = run(&["readiness", "--trust", &s(&missing), "--state-dir", &s(&state)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("not ready"), "{text}");
    assert!(text.contains(&s(&missing)) && text.contains("FAILED"), "{text}");

    // Policy from the configuration: trust made advisory, the machine counts as ready.
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(&cfg, "required_readiness = [\"architecture\", \"privileges\"]\n").expect("write");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run(&["readiness", "--json", "--config", &s(&cfg), "--trust", &s(&missing), "--state-dir", &s(&state)]);
    let report = json(&out);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        (check(&report, "trust")["state"].as_str(), check(&report, "trust")["required"].as_bool()),
        (Some("failed"), Some(false))
    );
}

#[test]
fn apply_uses_the_trust_directory_and_names_it_when_missing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("trusted-keys");
    let pkg = tmp.path().join("x.hpatch");
    std::fs::write(&pkg, b"not a package").expect("write");
    let state = s(&tmp.path().join("state"));
    let out = run(&["apply", "--pid", "1", &s(&pkg), "--trust", &s(&missing), "--state-dir", &state]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("trust directory {} does not exist", s(&missing))), "{err}");
    let help = String::from_utf8_lossy(&run(&["apply", "--help"]).stdout).into_owned();
    assert!(help.contains("/etc/hotpatch/trusted-keys"), "{help}");
    let help = String::from_utf8_lossy(&run(&["agent", "--help"]).stdout).into_owned();
    assert!(help.contains("/etc/hotpatch/trusted-keys"), "{help}");
}

#[test]
fn a_debug_root_others_can_write_is_refused_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let trust = trust_dir(tmp.path());
    let debug = tmp.path().join("debug");
    std::fs::create_dir(&debug).expect("mkdir");
    std::fs::set_permissions(&debug, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let pkg = tmp.path().join("x.hpatch");
    std::fs::write(&pkg, b"not a package").expect("write");
    let state = s(&tmp.path().join("state"));
    let out = Command::new(HOTPATCH)
        .args(["apply", "--pid", "1", &s(&pkg), "--trust", &s(&trust), "--state-dir", &state])
        .env("HOTPATCH_DEBUG_DIRS", &debug)
        .output()
        .expect("apply");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("debug root {} is writable by everyone", s(&debug))), "{err}");
    let out = Command::new(HOTPATCH)
        .args(["readiness", "--json", "--trust", &s(&trust), "--state-dir", &state])
        .env("HOTPATCH_DEBUG_DIRS", &debug)
        .output()
        .expect("readiness");
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(check(&report, "debug-roots")["state"], "failed", "{report}");
}
