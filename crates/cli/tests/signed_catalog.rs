//! A control plane that lies (a small fake on loopback whose every answer the
//! test writes) against an agent checking in with `hotpatch agent --once`:
//! it cannot make the agent roll back without a signed revocation, nor apply a
//! lower level after a rollback or a restart, nor replay old or expired
//! catalog metadata (which is reported stale); a signed revocation is honoured.

mod common;

use common::control_plane::{Script, scripted};
use common::*;
use hotpatch_format::{CatalogEntry, CatalogMetadata, SecretKey, SignedDocument};
use serde_json::{Value, json};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// Two packages of the fixture's service (levels 1 and 2) and what a server says of them.
struct Levels {
    bytes: [Vec<u8>; 2],
    manifest: [Value; 2],
}

impl Levels {
    fn pack(f: &Fixture) -> Levels {
        let pack = |level: u32| {
            let path = f.path(&format!("svc-{level}.hpatch"));
            f.pack(&f.path("svc"), level, &path);
            let inspect = json(&run(&["--json", "inspect", &s(&path)]));
            let manifest = if inspect["manifest"].is_object() { inspect["manifest"].clone() } else { inspect };
            (std::fs::read(&path).expect("package"), manifest)
        };
        let ((b1, m1), (b2, m2)) = (pack(1), pack(2));
        Levels { bytes: [b1, b2], manifest: [m1, m2] }
    }

    fn build_id(&self) -> String {
        self.manifest[0]["target"]["build_id"].as_str().unwrap_or_default().to_string()
    }

    fn patch_id(&self, level: u32) -> Value {
        self.manifest[level as usize - 1]["patch_id"].clone()
    }

    /// The check-in answer's entry assigning `level` as deployment `deployment`.
    fn offer(&self, level: u32, deployment: &str) -> Value {
        let sha = hotpatch_format::sha256_hex(&self.bytes[level as usize - 1]);
        json!({
            "deployment_id": deployment, "patch_id": self.patch_id(level), "build_id": self.build_id(),
            "file_name": "svc", "level": level, "artifact_sha256": sha, "url": format!("/api/v1/artifacts/{sha}")
        })
    }
}

fn answer(hotpatches: Vec<Value>, rollbacks: Vec<Value>, catalog: Option<Value>, revocations: Vec<Value>) -> Value {
    let mut a = json!({ "interval_seconds": 1, "jitter_seconds": 0, "entitled": true,
        "hotpatches": hotpatches, "rollbacks": rollbacks, "revocations": revocations });
    if let Some(c) = catalog {
        a["catalog"] = c;
    }
    a
}

fn set(script: &Script, value: Value) {
    *script.lock().expect("script") = value;
}

/// One `hotpatch agent --once --json`; the outcome whether or not work failed.
fn once(f: &Fixture, extra: &[&str]) -> Value {
    let state = s(&f.path("state"));
    let mut args = vec!["--json", "agent", "--once", "--state-dir", &state];
    let trust = f.trust();
    args.extend(["--trust", &trust]);
    args.extend(extra);
    let out = run(&args);
    // When work failed, the error follows the outcome on stdout.
    let first = serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>().next();
    first.and_then(Result::ok).unwrap_or_else(|| {
        panic!("no outcome: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn result_of<'a>(outcome: &'a Value, deployment: &str) -> &'a Value {
    outcome["results"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["deployment_id"] == deployment))
        .unwrap_or_else(|| panic!("no result for {deployment}: {outcome}"))
}

/// The levels active in a process, read from the process itself.
fn active_levels(pid: i32) -> Vec<u64> {
    let status = json(&run(&["--json", "status", "--pid", &pid.to_string()]));
    let all = status.as_array().cloned().unwrap_or_default();
    all.iter().filter(|a| a["active"] == true).filter_map(|a| a["level"].as_u64()).collect()
}

fn enrolled(f: &Fixture, artifacts: Vec<Vec<u8>>) -> Script {
    enrolled_watching(f, artifacts).0
}

/// Enrolled with a scripted server; its check-in bodies arrive on the receiver.
fn enrolled_watching(f: &Fixture, artifacts: Vec<Vec<u8>>) -> (Script, Receiver<Value>) {
    let (base, script, checkins) = scripted(artifacts);
    let out = run(&["agent", "--enroll", &base, "token", "--state-dir", &s(&f.path("state"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (script, checkins)
}

#[test]
fn a_server_cannot_roll_back_or_downgrade_without_a_signed_revocation() {
    let f = Fixture::new();
    let levels = Levels::pack(&f);
    let script = enrolled(&f, levels.bytes.to_vec());
    let svc = Svc::start(&f.path("svc"));

    set(&script, answer(vec![levels.offer(2, "d-2")], vec![], None, vec![]));
    let outcome = once(&f, &[]);
    assert_eq!(result_of(&outcome, "d-2")["status"], "applied", "{outcome}");
    assert!(svc.wait_for(LEVEL2));

    // An unsigned rollback is refused and reported; the process keeps level 2.
    let rollback = json!({ "deployment_id": "r-1", "patch_id": levels.patch_id(2), "build_id": levels.build_id() });
    set(&script, answer(vec![], vec![rollback.clone()], None, vec![]));
    let outcome = once(&f, &[]);
    let refused = result_of(&outcome, "r-1");
    assert_eq!(refused["status"], "failed", "{outcome}");
    assert!(
        refused["detail"].as_str().is_some_and(|d| d.contains("refused") && d.contains("not revoked")),
        "{refused}"
    );
    assert_eq!(active_levels(svc.pid()), [2]);

    // A lower level is refused while level 2 runs, and after a local rollback by root.
    set(&script, answer(vec![levels.offer(1, "d-1")], vec![], None, vec![]));
    let outcome = once(&f, &[]);
    assert!(result_of(&outcome, "d-1")["detail"].as_str().is_some_and(|d| d.contains("below level 2")), "{outcome}");
    let local = run(&["rollback", "--pid", &svc.pid().to_string(), levels.patch_id(2).as_str().unwrap_or_default()]);
    assert!(local.status.success(), "a local root operator's rollback: {}", String::from_utf8_lossy(&local.stderr));
    assert!(svc.wait_for(UNPATCHED));
    let outcome = once(&f, &[]);
    assert_eq!(result_of(&outcome, "d-1")["status"], "failed", "{outcome}");
    assert_eq!(active_levels(svc.pid()), Vec::<u64>::new());

    // A process started afresh: still no level 1.
    drop(svc);
    let svc = Svc::start(&f.path("svc"));
    let outcome = once(&f, &[]);
    assert!(result_of(&outcome, "d-1")["detail"].as_str().is_some_and(|d| d.contains("below level 2")), "{outcome}");
    assert_eq!(active_levels(svc.pid()), Vec::<u64>::new());
}

#[test]
fn a_signed_revocation_is_honoured_and_then_lets_the_lower_level_in() {
    let f = Fixture::new();
    let levels = Levels::pack(&f);
    let script = enrolled(&f, levels.bytes.to_vec());
    let svc = Svc::start(&f.path("svc"));
    set(&script, answer(vec![levels.offer(2, "d-2")], vec![], None, vec![]));
    assert_eq!(result_of(&once(&f, &[]), "d-2")["status"], "applied");
    assert!(svc.wait_for(LEVEL2));

    // Signed by a key the machine does not trust: refused like no statement at all.
    let stranger = f.path("stranger");
    assert!(run(&["keygen", "--out", &s(&stranger)]).status.success());
    let revoke = |key: &std::path::Path, out: &str| {
        let out = f.path(out);
        let r = run(&[
            "catalog",
            "revoke",
            "--key",
            &s(key),
            "--build-id",
            &levels.build_id(),
            "--level",
            "2",
            "--reason",
            "level 2 crashes under load",
            "-o",
            &s(&out),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        serde_json::from_slice::<Value>(&std::fs::read(out).expect("statement")).expect("json")
    };
    let foreign = revoke(&stranger.join("publisher.key"), "foreign.json");
    let rollback = json!({ "deployment_id": "r-1", "patch_id": levels.patch_id(2), "build_id": levels.build_id() });
    set(&script, answer(vec![], vec![rollback.clone()], None, vec![foreign]));
    let outcome = once(&f, &[]);
    assert_eq!(result_of(&outcome, "r-1")["status"], "failed", "{outcome}");
    assert!(outcome["notes"].to_string().contains("not trusted"), "{outcome}");
    assert_eq!(active_levels(svc.pid()), [2]);

    // The organisation's operations key, configured on the machine, signs it: honoured.
    let ops = f.path("ops");
    assert!(run(&["keygen", "--out", &s(&ops), "--name", "operations"]).status.success());
    let ops_dir = f.path("operations-keys");
    std::fs::create_dir(&ops_dir).expect("mkdir");
    std::fs::copy(ops.join("operations.pub"), ops_dir.join("operations.pub")).expect("copy");
    let signed = revoke(&ops.join("operations.key"), "revocation.json");
    set(&script, answer(vec![], vec![rollback], None, vec![signed.clone()]));
    let outcome = once(&f, &["--operations-keys", &s(&ops_dir)]);
    assert_eq!(result_of(&outcome, "r-1")["status"], "rolled-back", "{outcome}");
    assert!(svc.wait_for(UNPATCHED));

    // Level 2 is revoked for good; level 1 is now the highest acceptable.
    set(&script, answer(vec![levels.offer(2, "d-2"), levels.offer(1, "d-1")], vec![], None, vec![signed]));
    let outcome = once(&f, &[]);
    assert!(result_of(&outcome, "d-2")["detail"].as_str().is_some_and(|d| d.contains("revoked")), "{outcome}");
    assert_eq!(result_of(&outcome, "d-1")["status"], "applied", "{outcome}");
    assert!(svc.wait_for(LEVEL1));
}

/// Catalog metadata signed by the fixture's publisher, valid from `issued` to `expires`.
fn metadata(
    f: &Fixture,
    version: u64,
    issued: jiff::Timestamp,
    expires: jiff::Timestamp,
    targets: Vec<CatalogEntry>,
) -> Value {
    let key = SecretKey::load(&f.path("keys/publisher.key")).expect("key");
    let m = CatalogMetadata {
        version,
        issued: issued.to_string(),
        expires: expires.to_string(),
        targets,
        revoked: vec![],
        revoked_keys: vec![],
    };
    let doc: SignedDocument = m.sign(&key).expect("sign");
    serde_json::to_value(doc).expect("json")
}

#[test]
fn old_or_expired_catalog_metadata_is_refused_and_the_catalog_reported_stale() {
    let f = Fixture::new();
    let levels = Levels::pack(&f);
    let script = enrolled(&f, levels.bytes.to_vec());
    let now = jiff::Timestamp::now();
    let day = jiff::SignedDuration::from_hours(24);
    let (yesterday, tomorrow) = (now - day, now + day);

    // Made by the command a publisher runs.
    let catalog = f.path("catalog");
    std::fs::create_dir(&catalog).expect("mkdir");
    std::fs::write(catalog.join("svc-1.hpatch"), &levels.bytes[0]).expect("copy");
    let signed = f.path("catalog.json");
    let key = s(&f.path("keys/publisher.key"));
    let r = run(&["catalog", "sign", "--key", &key, "--catalog", &s(&catalog), "--version", "5", "-o", &s(&signed)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v5: Value = serde_json::from_slice(&std::fs::read(&signed).expect("metadata")).expect("json");
    let svc = Svc::start(&f.path("svc"));
    set(&script, answer(vec![], vec![], Some(v5), vec![]));
    let outcome = once(&f, &[]);
    assert_eq!(
        (outcome["catalog"]["version"].as_u64(), &outcome["catalog"]["stale_since"]),
        (Some(5), &Value::Null),
        "{outcome}"
    );
    // The catalog lists level 1; this machine's target is not running it.
    assert!(outcome["notes"].to_string().contains("lists level 1"), "{outcome}");

    // An older version, genuine and unexpired, replayed: refused, version 5 stays.
    set(&script, answer(vec![], vec![], Some(metadata(&f, 4, yesterday, tomorrow, vec![])), vec![]));
    let outcome = once(&f, &[]);
    assert_eq!(outcome["catalog"]["version"], 5, "{outcome}");
    assert!(outcome["catalog"]["problem"].as_str().is_some_and(|p| p.contains("replayed")), "{outcome}");

    // A newer but expired one: refused, and the catalog is stale since it expired.
    let expired_at = now - jiff::SignedDuration::from_secs(60);
    set(&script, answer(vec![], vec![], Some(metadata(&f, 9, yesterday, expired_at, vec![])), vec![]));
    let outcome = once(&f, &[]);
    assert_eq!(outcome["catalog"]["version"], 5, "{outcome}");
    assert_eq!(outcome["catalog"]["stale_since"], expired_at.to_string(), "{outcome}");
    let text = String::from_utf8_lossy(
        &run(&["agent", "--once", "--state-dir", &s(&f.path("state")), "--trust", &f.trust()]).stdout,
    )
    .into_owned();
    assert!(text.contains(&format!("catalog stale since {expired_at}")), "{text}");
    let ready = json(&run(&["--json", "readiness", "--trust", &f.trust(), "--state-dir", &s(&f.path("state"))]));
    let check = ready["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "catalog")).cloned();
    assert!(check.is_some_and(|c| c["detail"].as_str().is_some_and(|d| d.contains("catalog stale since"))), "{ready}");

    // A fresh version: accepted, no longer stale; a package unlike the one it lists is refused.
    let wrong = CatalogEntry {
        build_id: levels.build_id(),
        file_name: "svc".into(),
        patch_id: levels.patch_id(2).as_str().unwrap_or_default().into(),
        level: 2,
        sha256: "00".repeat(32),
    };
    let v10 = metadata(&f, 10, now, tomorrow, vec![wrong]);
    set(&script, answer(vec![levels.offer(2, "d-2")], vec![], Some(v10), vec![]));
    let outcome = once(&f, &[]);
    assert_eq!(
        (outcome["catalog"]["version"].as_u64(), &outcome["catalog"]["stale_since"]),
        (Some(10), &Value::Null),
        "{outcome}"
    );
    assert!(
        result_of(&outcome, "d-2")["detail"].as_str().is_some_and(|d| d.contains("the publisher's catalog")),
        "{outcome}"
    );
    assert_eq!(active_levels(svc.pid()), Vec::<u64>::new());

    // The publisher retires its key in the metadata: nothing it signed is trusted any more.
    let key_id = SecretKey::load(&f.path("keys/publisher.key")).expect("key").public().id_hex();
    let mut v11 = CatalogMetadata {
        version: 11,
        issued: now.to_string(),
        expires: tomorrow.to_string(),
        targets: vec![],
        revoked: vec![],
        revoked_keys: vec![key_id],
    };
    let key = SecretKey::load(&f.path("keys/publisher.key")).expect("key");
    let retiring = serde_json::to_value(v11.sign(&key).expect("sign")).expect("json");
    set(&script, answer(vec![levels.offer(1, "d-1")], vec![], Some(retiring), vec![]));
    let outcome = once(&f, &[]);
    assert_eq!(outcome["catalog"]["version"], 11, "{outcome}");
    assert!(result_of(&outcome, "d-1")["detail"].as_str().is_some_and(|d| d.contains("not trusted")), "{outcome}");
    // Even its next metadata: refused, version 11 stays.
    v11.version = 12;
    v11.revoked_keys.clear();
    let after = serde_json::to_value(v11.sign(&key).expect("sign")).expect("json");
    set(&script, answer(vec![], vec![], Some(after), vec![]));
    let outcome = once(&f, &[]);
    assert_eq!(outcome["catalog"]["version"], 11, "{outcome}");
    assert!(outcome["catalog"]["problem"].as_str().is_some_and(|p| p.contains("not trusted")), "{outcome}");
    assert_eq!(active_levels(svc.pid()), Vec::<u64>::new());
}

/// Waits (bounded) for a check-in reporting a result for `deployment`.
fn reported(checkins: &Receiver<Value>, deployment: &str) -> Option<Value> {
    for _ in 0..120 {
        let body = checkins.recv_timeout(Duration::from_secs(60)).ok()?;
        if let Some(r) = body["results"].as_array().and_then(|r| r.iter().find(|r| r["deployment_id"] == deployment)) {
            return Some(r.clone());
        }
    }
    None
}

#[test]
fn the_daemon_refuses_an_unsigned_rollback_and_keeps_patching_new_processes() {
    let f = Fixture::new();
    let levels = Levels::pack(&f);
    let (script, checkins) = enrolled_watching(&f, levels.bytes.to_vec());
    let first = Svc::start(&f.path("svc"));
    set(&script, answer(vec![levels.offer(1, "d-1")], vec![], None, vec![]));
    let cfg = f.path("agent.toml");
    let state = s(&f.path("state"));
    write_config(&cfg, &format!("state_dir = {state:?}\ntrust_dir = {:?}\nrescan_seconds = 0.2\n", f.trust()));
    let agent = Agent::start(&cfg, &f.path("agent.log"));
    assert!(first.wait_for(LEVEL1), "not patched; log:\n{}", agent.log_text());

    let rollback = json!({ "deployment_id": "r-1", "patch_id": levels.patch_id(1), "build_id": levels.build_id() });
    set(&script, answer(vec![levels.offer(1, "d-1")], vec![rollback], None, vec![]));
    let result = reported(&checkins, "r-1").unwrap_or_else(|| panic!("no result; log:\n{}", agent.log_text()));
    assert_eq!(result["status"], "failed", "{result}");
    assert!(result["detail"].as_str().is_some_and(|d| d.contains("not revoked")), "{result}");
    assert_eq!(active_levels(first.pid()), [1]);
    // The job stays: a process started now still gets the fix.
    let second = Svc::spawn(std::process::Command::new(f.path("svc")));
    assert!(second.wait_for(LEVEL1), "a new process not patched; log:\n{}", agent.log_text());
}
