//! The agent's local pieces that need no server: the credential file's
//! permissions and how running processes fold into one report per target.

use std::os::unix::fs::PermissionsExt;

use hotpatch_agent::state::{self, Credential};
use hotpatch_agent::work::summarize;
use hotpatch_engine::{AppliedPatch, PatchRecord, RunningTarget};

#[test]
fn credential_is_private_and_not_in_debug_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    let key = hotpatch_wire::MachineKey::from_seed([0x5a; 32]);
    let secret_hex = "5a".repeat(32);
    let c =
        Credential { server: "http://127.0.0.1:1".into(), machine_id: "m1".into(), key: key.to_text(), ca_cert: None };
    state::save_credential(&state_dir, &c).expect("save");
    let mode = std::fs::metadata(state_dir.join("credential.json")).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(&state_dir).expect("stat").permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let loaded = state::load_credential(&state_dir).expect("load");
    assert_eq!(loaded.machine_key(&state_dir).expect("key").public(), key.public());
    assert!(!format!("{c:?}").contains(&secret_hex));
    let missing = state::load_credential(&dir.path().join("nowhere")).expect_err("not enrolled");
    assert!(missing.to_string().contains("--enroll"), "{missing}");
    std::fs::write(state_dir.join("credential.json"), b"{not json").expect("write");
    assert!(state::load_credential(&state_dir).is_err());
}

#[test]
fn request_sequence_rises_and_survives_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = state::take_sequence(dir.path()).expect("first");
    let second = state::take_sequence(dir.path()).expect("second");
    assert!(second > first);
    // A counter far ahead of the clock (a clock that went back) still rises.
    std::fs::write(dir.path().join("last-sequence"), (first + 10_000_000).to_string()).expect("write");
    assert_eq!(state::take_sequence(dir.path()).expect("third"), first + 10_000_001);
    std::fs::write(dir.path().join("last-sequence"), "garbage").expect("write");
    let e = state::take_sequence(dir.path()).expect_err("corrupt counter");
    assert!(e.to_string().contains("last-sequence"), "{e}");
}

fn applied(pid: i32, level: u32, active: bool) -> AppliedPatch {
    AppliedPatch {
        pid,
        record: PatchRecord {
            patch_id: format!("fix-{level}"),
            level,
            build_id: "aa".repeat(20),
            target_file: "libdemo.so.1".into(),
            classification: "security".into(),
            cves: vec![],
            key_id: String::new(),
            region_start: 0,
            region_size: 0,
            applied_at: 0,
            retired: None,
        },
        functions: vec![],
        active,
    }
}

fn running(pid: i32, path: &str, build: &str, applied: Vec<AppliedPatch>) -> RunningTarget {
    RunningTarget { pid, comm: "demo".into(), build_id: build.into(), path: path.into(), applied }
}

#[test]
fn a_target_counts_as_patched_to_its_least_patched_process() {
    let a = "aa".repeat(20);
    let b = "bb".repeat(20);
    let list = vec![
        running(1, "/usr/lib/libdemo.so.1", &a, vec![applied(1, 2, true)]),
        running(2, "/usr/lib/libdemo.so.1", &a, vec![applied(2, 1, true)]),
        running(2, "/usr/bin/demo", &b, vec![]),
        running(3, "/usr/lib/libdemo.so.1", &a, vec![applied(3, 3, false), applied(3, 2, true)]),
    ];
    let r = summarize(&list);
    assert_eq!(r.len(), 2);
    let lib = r.iter().find(|t| t.build_id == a).expect("lib");
    assert_eq!((lib.file_name.as_str(), lib.processes, lib.applied_level), ("libdemo.so.1", 3, 1));
    assert_eq!(lib.applied_patch_id.as_deref(), Some("fix-1"));
    // Each process is listed once, with its own level (the active one).
    let per: Vec<(i32, u32, Option<&str>)> =
        lib.process_list.iter().map(|p| (p.pid, p.applied_level, p.applied_patch_id.as_deref())).collect();
    assert_eq!(per, [(1, 2, Some("fix-2")), (2, 1, Some("fix-1")), (3, 2, Some("fix-2"))]);
    let bin = r.iter().find(|t| t.build_id == b).expect("bin");
    assert_eq!((bin.file_name.as_str(), bin.applied_level, bin.applied_patch_id.clone()), ("demo", 0, None));
    assert_eq!(bin.process_list.iter().map(|p| (p.pid, p.applied_level)).collect::<Vec<_>>(), [(2, 0)]);
    // A new, unpatched process of the same target drops the level to 0.
    let mut more = list.clone();
    more.push(running(4, "/usr/lib/libdemo.so.1", &a, vec![]));
    assert_eq!(summarize(&more).iter().find(|t| t.build_id == a).map(|t| t.applied_level), Some(0));
}

#[test]
fn a_baseline_due_names_the_processes_that_must_restart() {
    let b = hotpatch_agent::protocol::BaselineWork {
        deployment_id: "d".into(),
        baseline: "2027.01".into(),
        file_names: vec!["libdemo.so.1".into()],
        restart: true,
        reboot_policy: "never".into(),
        reason: "new baseline".into(),
        window: None,
    };
    let a = "aa".repeat(20);
    let list = vec![
        running(10, "/usr/lib/libdemo.so.1", &a, vec![]),
        running(11, "/usr/lib/libdemo.so.1 (deleted)", &a, vec![]),
        running(12, "/usr/lib/libother.so", &a, vec![]),
    ];
    let due = hotpatch_agent::work::restarts_due(&[b], &list);
    assert_eq!(due[0].processes, ["10 (demo)", "11 (demo)"]);
}
