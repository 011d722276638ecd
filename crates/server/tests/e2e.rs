//! End to end on loopback: a real agent enrolls with a real server, receives a
//! deployment, patches a real running process with the engine, reports back, and
//! the server's compliance page (rendered by Chromium) shows the target applied.
//! Needs root (ptrace), gcc and Debian's chromium.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;
use hotpatch_build::{PackRequest, Replacement, manifest_for};
use hotpatch_format::{Classification, Package, SecretKey, TrustStore};
use serde_json::json;

const TARGET_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int answer(int x) { volatile int y = x; return y * 2 + 1; }
int main(void) {
    /* Bounded: exits by itself after at most five minutes. */
    for (int i = 0; i < 6000; i++) { printf("%d\n", answer(20)); fflush(stdout); usleep(50000); }
    return 0;
}
"#;

const FIX_C: &str = "int answer_fixed(int x) { volatile int y = x; return y * 3; }\n";

fn gcc(dir: &std::path::Path, name: &str, source: &str, args: &[&str]) -> std::path::PathBuf {
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(name);
    std::fs::write(&src, source).expect("write source");
    let r = Command::new("gcc").args(args).arg(&src).arg("-o").arg(&out).output().expect("run gcc");
    assert!(r.status.success(), "gcc: {}", String::from_utf8_lossy(&r.stderr));
    out
}

/// The running baseline process; killed and reaped when dropped.
struct Target {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Target {
    fn start(path: &std::path::Path) -> Target {
        let mut child = Command::new(path).stdout(Stdio::piped()).spawn().expect("start target");
        let stdout = child.stdout.take().expect("stdout");
        Target { child, lines: BufReader::new(stdout).lines() }
    }

    /// Reads printed values until `want` appears; false if the process ended first.
    fn wait_for(&mut self, want: &str) -> bool {
        for line in self.lines.by_ref() {
            if line.map(|l| l == want).unwrap_or(false) {
                return true;
            }
        }
        false
    }

    fn next_value(&mut self) -> Option<String> {
        self.lines.next().and_then(Result::ok)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn build_package(dir: &std::path::Path, key: &SecretKey) -> Vec<u8> {
    let baseline_path = gcc(dir, "e2e-demo", TARGET_C, &["-O2", "-fno-ipa-ra", "-g", "-Wl,--build-id"]);
    let payload_path = gcc(dir, "fix.o", FIX_C, &["-c", "-fPIC", "-O2", "-ffunction-sections", "-fdata-sections"]);
    let baseline = std::fs::read(&baseline_path).expect("baseline");
    let payload = std::fs::read(&payload_path).expect("payload");
    let manifest = manifest_for(&PackRequest {
        baseline: &baseline,
        baseline_name: "e2e-demo".into(),
        debug_file: None,
        payload: &payload,
        replacements: vec![Replacement { old: "answer".into(), file: None, new: "answer_fixed".into() }],
        patch_id: Some("e2e-fix-1".into()),
        product: "e2e".into(),
        level: 1,
        classification: Classification::Security,
        cves: vec!["CVE-2027-4242".into()],
        description: "answer is computed safely".into(),
        created: "2027-08-01T00:00:00Z".into(),
        allow_ipa_ra: false,
    })
    .expect("manifest");
    Package::build(manifest, &payload, key).expect("package")
}

fn setup(s: &TestServer, dir: &std::path::Path) -> (Target, String) {
    let pkg = build_package(dir, &s.key);
    let (st, up) = s.upload(&s.admin, &pkg);
    assert_eq!(st, 200, "{up}");
    let (st, d) = s.post(
        "/api/v1/deployments",
        &s.admin,
        json!({ "name": "e2e", "kind": "hotpatch", "patch_id": "e2e-fix-1", "rings": { "canary_percent": 100, "soak_seconds": 0 } }),
    );
    assert_eq!(st, 200, "{d}");
    let mut target = Target::start(&dir.join("e2e-demo"));
    assert_eq!(target.next_value().as_deref(), Some("41"), "baseline prints 20*2+1");
    let (_, t) = s.post("/api/v1/enrollment-tokens", &s.admin, json!({ "tags": ["e2e"] }));
    (target, t["token"].as_str().unwrap_or_default().to_string())
}

#[test]
fn agent_enrolls_receives_a_deployment_patches_a_process_and_compliance_shows_it() {
    for b in backends() {
        let s = TestServer::start(&b);
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut target, token) = setup(&s, dir.path());
        let state_dir = dir.path().join("agent-state");
        let cred = hotpatch_agent::enroll(&s.base, &token, &state_dir, None).expect("enroll");
        let trust = TrustStore::from_keys(vec![s.key.public()]);
        let outcome = hotpatch_agent::check_in_once(&state_dir, &trust).expect("check in");
        assert_eq!(outcome.results.len(), 1, "{outcome:?}");
        assert_eq!(outcome.results[0].status, "applied", "{outcome:?}");
        assert!(outcome.results_reported);
        // The running process now computes with the replacement: 20*3.
        assert!(target.wait_for("60"), "the process never printed the patched value");
        // Nothing more to do on the next check-in; the server sees level 1 applied.
        let again = hotpatch_agent::check_in_once(&state_dir, &trust).expect("second check-in");
        assert!(again.results.is_empty(), "{again:?}");
        let (_, c) = s.get("/api/v1/compliance/machines", &s.admin);
        let row = c["rows"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["file_name"] == "e2e-demo" && x["latest_level"] == 1))
            .cloned()
            .unwrap_or_default();
        assert_eq!((row["status"].as_str(), row["applied_level"].as_i64()), (Some("applied"), Some(1)), "{c}");
        assert_eq!(row["machine_id"].as_str(), Some(cred.machine_id.as_str()));
        let page = view(&s, "/ui/compliance");
        assert!(page.contains("CVE-2027-4242"), "{page}");
        let hostname = hotpatch_agent::facts::hostname();
        let table = page.split("id=\"compliance\"").nth(1).unwrap_or_default();
        let line = table
            .split("<tr>")
            .find(|r| r.contains("e2e-demo") && r.contains("s-applied"))
            .unwrap_or_default()
            .to_string();
        assert!(line.contains(&hostname) && line.contains("s-applied"), "{line}");
        drop(target);
    }
}

#[test]
fn agent_never_applies_a_package_its_own_trust_rejects() {
    for b in backends() {
        let s = TestServer::start(&b);
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut target, token) = setup(&s, dir.path());
        let state_dir = dir.path().join("agent-state");
        hotpatch_agent::enroll(&s.base, &token, &state_dir, None).expect("enroll");
        // The server trusts the publisher; this agent trusts someone else.
        let trust = TrustStore::from_keys(vec![SecretKey::from_seed([42u8; 32]).public()]);
        let outcome = hotpatch_agent::check_in_once(&state_dir, &trust).expect("check in");
        assert_eq!(outcome.results.len(), 1, "{outcome:?}");
        assert_eq!(outcome.results[0].status, "failed");
        assert!(outcome.results[0].detail.contains("verification failed"), "{outcome:?}");
        for _ in 0..3 {
            assert_eq!(target.next_value().as_deref(), Some("41"), "process must be untouched");
        }
        let (_, c) = s.get("/api/v1/compliance/machines", &s.admin);
        let row = c["rows"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["file_name"] == "e2e-demo" && x["latest_level"] == 1))
            .cloned()
            .unwrap_or_default();
        assert_eq!(row["status"], json!("apply-failed"), "{c}");
    }
}

/// Catalog metadata signed by `key`, version `version`, valid for a day.
fn catalog_metadata(key: &SecretKey, version: u64, build_id: &str, sha: &str) -> serde_json::Value {
    let now = jiff::Timestamp::now();
    let m = hotpatch_format::CatalogMetadata {
        version,
        issued: now.to_string(),
        expires: (now + jiff::SignedDuration::from_hours(24)).to_string(),
        targets: vec![hotpatch_format::CatalogEntry {
            build_id: build_id.into(),
            file_name: "e2e-demo".into(),
            patch_id: "e2e-fix-1".into(),
            level: 1,
            sha256: sha.into(),
        }],
        revoked: vec![],
        revoked_keys: vec![],
    };
    serde_json::to_value(m.sign(key).expect("sign")).expect("json")
}

fn rollback_deployment(s: &TestServer, name: &str) {
    let (st, d) = s.post(
        "/api/v1/deployments",
        &s.admin,
        json!({ "name": name, "kind": "rollback", "patch_id": "e2e-fix-1", "rings": { "canary_percent": 100, "soak_seconds": 0 } }),
    );
    assert_eq!(st, 200, "{d}");
}

#[test]
fn a_rollback_deployment_is_carried_out_only_with_a_signed_revocation() {
    for b in backends() {
        let s = TestServer::start(&b);
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut target, token) = setup(&s, dir.path());
        let package = Package::parse(&build_package(dir.path(), &s.key)).expect("package");
        let build_id = package.manifest.target.build_id.clone();
        let state_dir = dir.path().join("agent-state");
        hotpatch_agent::enroll(&s.base, &token, &state_dir, None).expect("enroll");
        let trust = TrustStore::from_keys(vec![s.key.public()]);
        let outcome = hotpatch_agent::check_in_once(&state_dir, &trust).expect("check in");
        assert_eq!(outcome.results[0].status, "applied", "{outcome:?}");
        assert!(target.wait_for("60"));

        // The server keeps the publisher's metadata: signed by a trusted key, versions only growing.
        let (_, list) = s.get("/api/v1/hotpatches", &s.admin);
        let sha = list["hotpatches"][0]["artifact_sha256"].as_str().unwrap_or_default().to_string();
        let (st, body) = s.put("/api/v1/catalog/metadata", &s.admin, catalog_metadata(&s.key, 5, &build_id, &sha));
        assert_eq!(st, 200, "{body}");
        let (st, _) = s.put("/api/v1/catalog/metadata", &s.admin, catalog_metadata(&s.key, 5, &build_id, &sha));
        assert_eq!(st, 409, "the same version again");
        let stranger = SecretKey::from_seed([99u8; 32]);
        let (st, _) = s.put("/api/v1/catalog/metadata", &s.admin, catalog_metadata(&stranger, 6, &build_id, &sha));
        assert_eq!(st, 422, "signed by a key the organisation does not trust");
        let (st, _) = s.put("/api/v1/catalog/metadata", &s.admin, json!({ "kind": "catalog" }));
        assert_eq!(st, 422, "not a signed document");

        // A rollback deployment without a signed revocation: the agent refuses and says why.
        rollback_deployment(&s, "rb-unsigned");
        let outcome = hotpatch_agent::check_in_once(&state_dir, &trust).expect("check in");
        assert_eq!(outcome.catalog.version, Some(5), "{outcome:?}");
        assert_eq!(outcome.results.len(), 1, "{outcome:?}");
        assert_eq!(outcome.results[0].status, "failed");
        assert!(outcome.results[0].detail.contains("not revoked"), "{outcome:?}");
        for _ in 0..3 {
            assert_eq!(target.next_value().as_deref(), Some("60"), "the fix must stay");
        }

        // The publisher revokes level 1; the server passes the statement on; the next rollback is honoured.
        let statement = hotpatch_format::RevocationStatement {
            revocation: hotpatch_format::Revocation {
                build_id: build_id.clone(),
                levels: vec![1],
                reason: "level 1 breaks answer()".into(),
            },
            issued: jiff::Timestamp::now().to_string(),
        };
        let doc = serde_json::to_value(statement.sign(&s.key).expect("sign")).expect("json");
        let (st, body) = s.post("/api/v1/catalog/revocations", &s.admin, doc);
        assert_eq!((st, body["created"].as_bool()), (200, Some(true)), "{body}");
        rollback_deployment(&s, "rb-signed");
        let outcome = hotpatch_agent::check_in_once(&state_dir, &trust).expect("check in");
        assert_eq!(outcome.results.len(), 1, "{outcome:?}");
        assert_eq!(outcome.results[0].status, "rolled-back", "{outcome:?}");
        assert!(target.wait_for("41"), "the process never went back to the original code");
        drop(target);
    }
}
