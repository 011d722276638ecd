//! Key rotation as a publisher and a machine live it: `hotpatch catalog keys`
//! signs a keys document with the current key, a control plane (a scripted
//! fake on loopback) passes it on, and `hotpatch agent --once`, each run a
//! fresh process over the same state directory, follows it: a package signed
//! by the new key is applied to a live process, the retired key signs nothing
//! afterwards (metadata or package), and an older keys document is a replay.

mod common;

use common::control_plane::{Script, scripted};
use common::*;
use serde_json::{Value, json};

fn set(script: &Script, value: Value) {
    *script.lock().expect("script") = value;
}

fn answer(hotpatches: Vec<Value>, keys: Vec<Value>, catalogs: Vec<Value>) -> Value {
    json!({ "interval_seconds": 1, "jitter_seconds": 0, "entitled": true,
        "hotpatches": hotpatches, "keys": keys, "catalogs": catalogs })
}

/// One `hotpatch agent --once --json`: a fresh agent process each time.
fn once(f: &Fixture) -> Value {
    let (state, trust) = (s(&f.path("state")), f.trust());
    let out = run(&["--json", "agent", "--once", "--state-dir", &state, "--trust", &trust]);
    let first = serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>().next();
    first.and_then(Result::ok).unwrap_or_else(|| {
        panic!("no outcome: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn file_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

fn success(args: &[&str]) {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `hotpatch catalog keys`: publisher's version `version` naming `new`, signed with `signer`.
fn keys_document(f: &Fixture, version: u32, new: &[&str], signer: &str) -> Value {
    let out = f.path(&format!("keys-v{version}-{signer}.json"));
    let (key, anchor) = (s(&f.path(&format!("keys/{signer}.key"))), s(&f.path("keys/publisher.pub")));
    let mut args = vec!["catalog", "keys", "--key", &key, "--anchor", &anchor];
    let version = version.to_string();
    args.extend(["--version", &version]);
    let pubs: Vec<String> = new.iter().map(|n| s(&f.path(&format!("keys/{n}.pub")))).collect();
    for p in &pubs {
        args.extend(["--new-key", p.as_str()]);
    }
    let out_s = s(&out);
    args.extend(["-o", &out_s]);
    success(&args);
    file_json(&out)
}

/// `hotpatch catalog sign` over `dir` with `signer`'s key.
fn metadata(f: &Fixture, dir: &std::path::Path, version: u32, signer: &str) -> Value {
    let out = f.path(&format!("catalog-v{version}-{signer}.json"));
    let key = s(&f.path(&format!("keys/{signer}.key")));
    let version = version.to_string();
    success(&["catalog", "sign", "--key", &key, "--catalog", &s(dir), "--version", &version, "-o", &s(&out)]);
    file_json(&out)
}

fn offer(bytes: &[u8], manifest: &Value, deployment: &str) -> Value {
    let sha = hotpatch_format::sha256_hex(bytes);
    json!({
        "deployment_id": deployment, "patch_id": manifest["patch_id"], "build_id": manifest["target"]["build_id"],
        "file_name": "svc", "level": manifest["level"], "artifact_sha256": sha, "url": format!("/api/v1/artifacts/{sha}")
    })
}

fn packed(f: &Fixture, level: u32, signer: &str) -> (Vec<u8>, Value) {
    let path = f.path(&format!("published/svc-{level}.hpatch"));
    f.pack_with(&f.path("svc"), level, &path, &f.path(&format!("keys/{signer}.key")));
    let inspect = json(&run(&["--json", "inspect", &s(&path)]));
    let manifest = if inspect["manifest"].is_object() { inspect["manifest"].clone() } else { inspect };
    (std::fs::read(&path).expect("package"), manifest)
}

fn result_detail(outcome: &Value, deployment: &str) -> (String, String) {
    let r = outcome["results"].as_array().and_then(|r| r.iter().find(|x| x["deployment_id"] == deployment));
    let r = r.unwrap_or_else(|| panic!("no result for {deployment}: {outcome}"));
    (r["status"].as_str().unwrap_or_default().into(), r["detail"].as_str().unwrap_or_default().into())
}

#[test]
fn a_rotated_key_is_followed_across_agent_runs_and_the_retired_key_signs_nothing_after() {
    let f = Fixture::new();
    let keys = s(&f.path("keys"));
    success(&["keygen", "--out", &keys, "--name", "rotated"]);
    success(&["keygen", "--out", &keys, "--name", "third"]);
    std::fs::create_dir(f.path("published")).expect("mkdir");
    let (level1, m1) = packed(&f, 1, "rotated");
    let (level2, m2) = packed(&f, 2, "publisher");
    let (base, script, _checkins) = scripted(vec![level1.clone(), level2.clone()]);
    success(&["agent", "--enroll", &base, "token", "--state-dir", &s(&f.path("state"))]);
    let svc = Svc::start(&f.path("svc"));

    // Without the keys document the new key's package is a stranger's.
    set(&script, answer(vec![offer(&level1, &m1, "d-0")], vec![], vec![]));
    let (status, detail) = result_detail(&once(&f), "d-0");
    assert!(status == "failed" && detail.contains("verification failed"), "{detail}");

    // The publisher rotates: the machine follows and applies the new key's package.
    let v1 = keys_document(&f, 1, &["rotated"], "publisher");
    set(&script, answer(vec![offer(&level1, &m1, "d-1")], vec![v1.clone()], vec![]));
    let outcome = once(&f);
    assert_eq!(result_detail(&outcome, "d-1").0, "applied", "{outcome}");
    assert!(svc.wait_for(LEVEL1), "the process never ran level 1");

    // A later run, no keys document in the answer: the rotation was kept. Metadata
    // signed by the new key is accepted; by the retired key, refused and said so.
    std::fs::remove_file(f.path("published/svc-2.hpatch")).expect("rm");
    let current = metadata(&f, &f.path("published"), 5, "rotated");
    let stale_key = metadata(&f, &f.path("published"), 6, "publisher");
    set(&script, answer(vec![], vec![], vec![current]));
    let outcome = once(&f);
    assert_eq!(outcome["catalog"]["version"], 5, "{outcome}");
    set(&script, answer(vec![], vec![], vec![stale_key]));
    let outcome = once(&f);
    let problem = outcome["catalog"]["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("not a current key"), "{outcome}");

    // Nor does the retired key's package apply, whatever the server assigns.
    set(&script, answer(vec![offer(&level2, &m2, "d-2")], vec![], vec![]));
    let (status, detail) = result_detail(&once(&f), "d-2");
    assert!(status == "failed" && detail.contains("verification failed"), "{detail}");
    let status = json(&run(&["--json", "status", "--pid", &svc.pid().to_string()]));
    let active: Vec<u64> = status
        .as_array()
        .map(|a| a.iter().filter(|x| x["active"] == true).filter_map(|x| x["level"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(active, [1], "the process keeps level 1: {status}");

    // Rotating on to a third key; then the old document again is a replay.
    let v2 = keys_document(&f, 2, &["third"], "rotated");
    set(&script, answer(vec![], vec![v2], vec![]));
    let outcome = once(&f);
    let notes = outcome["notes"].to_string();
    assert!(!notes.contains("keys document refused"), "{outcome}");
    set(&script, answer(vec![], vec![v1], vec![]));
    let notes = once(&f)["notes"].to_string();
    assert!(notes.contains("keys document refused") && notes.contains("replayed"), "{notes}");
}

#[test]
fn a_keys_document_that_cannot_be_followed_is_not_written() {
    let f = Fixture::new();
    let keys = s(&f.path("keys"));
    success(&["keygen", "--out", &keys, "--name", "rotated"]);
    let (key, anchor, new) =
        (s(&f.path("keys/publisher.key")), s(&f.path("keys/publisher.pub")), s(&f.path("keys/rotated.pub")));
    let out = s(&f.path("v0.json"));
    let args = ["catalog", "keys", "--key", &key, "--anchor", &anchor, "--new-key", &new, "-o", &out];
    let r = run(&[&args[..], &["--version", "0"]].concat());
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("version must be at least 1"));
    assert!(!f.path("v0.json").exists());
    let r = run(&[&args[..4], &["--anchor", &key, "--new-key", &new, "-o", &out, "--version", "1"]].concat());
    assert!(!r.status.success(), "a secret key is not an anchor");
}
