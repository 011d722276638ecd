//! The HTTP API end to end on loopback, against SQLite and (when configured) PostgreSQL.

mod common;

use common::*;
use hotpatch_format::{Classification, SecretKey};
use serde_json::{Value, json};

#[test]
fn access_roles_tokens_and_audit() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (st, me) = s.get("/api/v1/whoami", &s.admin);
        assert_eq!((st, me["role"].as_str()), (200, Some("admin")));
        let (st, _) = s.post("/api/v1/users", &s.admin, json!({ "name": "vera", "role": "viewer" }));
        assert_eq!(st, 200);
        let (st, e) = s.post("/api/v1/users", &s.admin, json!({ "name": "vera", "role": "viewer" }));
        assert_eq!(st, 409, "{e}");
        let (st, e) = s.post("/api/v1/users", &s.admin, json!({ "name": "x", "role": "god" }));
        assert_eq!(st, 400);
        assert!(e["error"].as_str().unwrap_or("").contains("unknown role"), "{e}");
        let (st, t) = s.post("/api/v1/tokens", &s.admin, json!({ "label": "vera's", "user": "vera" }));
        assert_eq!(st, 200, "{t}");
        let viewer = t["token"].as_str().unwrap_or_default().to_string();
        let (st, e) = s.post("/api/v1/enrollment-tokens", &viewer, json!({}));
        assert_eq!(st, 403, "{e}");
        assert!(e["error"].as_str().unwrap_or("").contains("operator"), "{e}");
        assert_eq!(s.get("/api/v1/machines", &viewer).0, 200);
        // Revoked and forged tokens are refused.
        let id = t["id"].as_str().unwrap_or_default();
        let (st, _, _) = call("DELETE", &format!("{}/api/v1/tokens/{id}", s.base), Some(&s.admin), None);
        assert_eq!(st, 200);
        assert_eq!(s.get("/api/v1/machines", &viewer).0, 401);
        assert_eq!(s.get("/api/v1/machines", "hpu_forged").0, 401);
        assert_eq!(call("GET", &format!("{}/api/v1/machines", s.base), None, None).0, 401);
        // Every change is in the audit log.
        let (_, a) = s.get("/api/v1/audit", &s.admin);
        let actions: Vec<&str> = a["entries"]
            .as_array()
            .map(|v| v.iter().filter_map(|e| e["action"].as_str()).collect())
            .unwrap_or_default();
        for want in ["org.create", "user.create", "token.create", "token.revoke"] {
            assert!(actions.contains(&want), "{want} missing from {actions:?}");
        }
        // Secrets are stored only hashed.
        let stored: Vec<String> = s.rt().block_on(async {
            sqlx::query_scalar::<_, String>("SELECT token_hash FROM api_tokens")
                .fetch_all(&s.state.db.pool)
                .await
                .unwrap_or_default()
        });
        assert!(!stored.is_empty() && stored.iter().all(|h| h.len() == 64 && !h.starts_with("hpu_")));
    }
}

#[test]
fn organisations_are_isolated() {
    for b in backends() {
        let s = TestServer::start(&b);
        let other = s.create_org("globex", Some(30));
        let (mid, _) = s.enroll(&[], "acme-1");
        assert_eq!(s.upload(&s.admin, &package(&s.key, "acme-fix", BUILD_A, 1, Classification::Security, &[])).0, 200);
        assert_eq!(s.get(&format!("/api/v1/machines/{mid}"), &s.admin).0, 200);
        let (st, e) = s.get(&format!("/api/v1/machines/{mid}"), &other);
        assert_eq!(st, 404, "{e}");
        assert_eq!(s.get("/api/v1/machines", &other).1["machines"].as_array().map(Vec::len), Some(0));
        assert_eq!(s.get("/api/v1/hotpatches", &other).1["hotpatches"].as_array().map(Vec::len), Some(0));
        let (_, list) = s.get("/api/v1/hotpatches", &s.admin);
        let sha = list["hotpatches"][0]["artifact_sha256"].as_str().unwrap_or_default().to_string();
        assert_eq!(s.get(&format!("/api/v1/artifacts/{sha}"), &other).0, 404);
        let (st, e) = s.post(
            "/api/v1/deployments",
            &other,
            json!({ "name": "steal", "kind": "hotpatch", "patch_id": "acme-fix" }),
        );
        assert_eq!(st, 404, "{e}");
        assert!(
            s.get("/api/v1/audit", &other).1["entries"]
                .as_array()
                .is_some_and(|v| v.iter().all(|e| e["subject"] != "acme-fix"))
        );
    }
}

#[test]
fn enrollment_is_one_time_and_credentials_revocable() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (_, t) = s.post("/api/v1/enrollment-tokens", &s.admin, json!({ "tags": ["web"] }));
        let token = t["token"].as_str().unwrap_or_default();
        let (mid, cred) = s.enroll_with(token, "web-1").expect("first enrollment");
        let (st, again) = s.enroll_with(token, "web-2").expect_err("token is one-time");
        assert_eq!(st, 401);
        assert!(again["error"].as_str().unwrap_or("").contains("already used"), "{again}");
        assert_eq!(s.enroll_with("hpe_forged", "x").expect_err("forged token").0, 401);
        // A key that is not a valid public key is refused by name.
        let (_, t2) = s.post("/api/v1/enrollment-tokens", &s.admin, json!({}));
        let (st, e) =
            s.post("/api/v1/agent/enroll", "", json!({ "token": t2["token"], "hostname": "x", "public_key": "00" }));
        assert_eq!(st, 400, "{e}");
        assert!(e["error"].as_str().unwrap_or("").contains("public_key"), "{e}");
        let body = checkin_body("web-1", 2, &[], json!([]));
        assert_eq!(s.post("/api/v1/agent/checkin", &cred, body.clone()).0, 200);
        let (_, m) = s.get(&format!("/api/v1/machines/{mid}"), &s.admin);
        assert_eq!(m["tags"], json!(["web"]));
        assert_eq!(m["cores"], json!(2));
        assert_eq!(s.post(&format!("/api/v1/machines/{mid}/revoke"), &s.admin, json!({})).0, 200);
        let (st, e) = s.post("/api/v1/agent/checkin", &cred, body);
        assert_eq!(st, 401);
        assert!(e["error"].as_str().unwrap_or("").contains("revoked"), "{e}");
    }
}

/// A captured check-in sent again, a request signed by another key, a body
/// changed in flight, a bearer token in place of a signature: each is refused
/// with 401 and changes nothing.
#[test]
fn forged_and_replayed_machine_requests_are_refused() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (mid, cred) = s.enroll(&["web"], "web-1");
        let url = format!("{}/api/v1/agent/checkin", s.base);
        let body = serde_json::to_vec(&checkin_body("web-1", 2, &[], json!([]))).expect("json");
        let send = |req: ureq::Request, bytes: &[u8]| -> (u16, Value) {
            let r = match req.set("Content-Type", "application/json").send_bytes(bytes) {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{e}"),
            };
            let st = r.status();
            (st, serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or(Value::Null))
        };
        // Capture one signed request: its headers, exactly.
        let captured = common::sign_request(ureq::post(&url), &cred, &url, &body);
        let headers: Vec<(String, String)> = captured
            .header_names()
            .into_iter()
            .filter_map(|n| captured.header(&n).map(|v| (n.clone(), v.to_string())))
            .collect();
        let replay = || headers.iter().fold(ureq::post(&url), |r, (n, v)| r.set(n, v));
        assert_eq!(send(replay(), &body).0, 200, "the original is accepted");
        let (st, e) = send(replay(), &body);
        assert_eq!(st, 401, "{e}");
        assert!(e["error"].as_str().unwrap_or("").contains("replayed"), "{e}");
        // The same headers over a changed body: the signature no longer holds.
        let changed = serde_json::to_vec(&checkin_body("evil", 64, &[], json!([]))).expect("json");
        let (st, e) = send(replay(), &changed);
        assert_eq!(st, 401, "{e}");
        assert!(e["error"].as_str().unwrap_or("").contains("does not verify"), "{e}");
        // Someone else's key claiming this machine id.
        let stranger = common::machine_credential(&mid, &hotpatch_wire::MachineKey::from_seed([5; 32]));
        let (st, e) = s.post("/api/v1/agent/checkin", &stranger, checkin_body("web-1", 2, &[], json!([])));
        assert_eq!(st, 401, "{e}");
        assert!(e["error"].as_str().unwrap_or("").contains("does not verify"), "{e}");
        // An unknown machine, and a bare bearer token.
        let ghost = common::machine_credential("ffff", &hotpatch_wire::MachineKey::from_seed([6; 32]));
        let (st, e) = s.post("/api/v1/agent/checkin", &ghost, checkin_body("x", 2, &[], json!([])));
        assert!(st == 401 && e["error"].as_str().unwrap_or("").contains("unknown"), "{st} {e}");
        let (st, e) = s.post("/api/v1/agent/checkin", "hpm_forged", checkin_body("x", 2, &[], json!([])));
        assert!(st == 401 && e["error"].as_str().unwrap_or("").contains("missing machine signature"), "{st} {e}");
        // None of the refused requests reached the inventory.
        let (_, m) = s.get(&format!("/api/v1/machines/{mid}"), &s.admin);
        assert_eq!((m["hostname"].as_str(), m["cores"].as_i64()), (Some("web-1"), Some(2)), "{m}");
        // Artifact downloads are signed requests too: a replayed one is refused.
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let (_, list) = s.get("/api/v1/hotpatches", &s.admin);
        let sha = list["hotpatches"][0]["artifact_sha256"].as_str().unwrap_or_default().to_string();
        let art = format!("{}/api/v1/artifacts/{sha}", s.base);
        let get = common::sign_request(ureq::get(&art), &cred, &art, &[]);
        let names = get.header_names();
        let hs: Vec<(String, String)> =
            names.iter().filter_map(|n| get.header(n).map(|v| (n.clone(), v.to_string()))).collect();
        let again = hs.iter().fold(ureq::get(&art), |r, (n, v)| r.set(n, v));
        assert_eq!(get.call().map(|r| r.status()).unwrap_or(0), 200);
        match again.call() {
            Err(ureq::Error::Status(401, _)) => {}
            other => panic!("replayed download not refused: {:?}", other.map(|r| r.status())),
        }
    }
}

#[test]
fn catalog_verifies_signatures_before_storing() {
    for b in backends() {
        let s = TestServer::start(&b);
        let good = package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &["CVE-2027-0001"]);
        let mut forged = good.clone();
        let last = forged.len() - 1;
        forged[last] ^= 0x55;
        let (st, e) = s.upload(&s.admin, &forged);
        assert_eq!(st, 422, "{e}");
        assert!(e["error"].as_str().unwrap_or("").contains("signature"), "{e}");
        let stranger = SecretKey::from_seed([9u8; 32]);
        let (st, e) = s.upload(&s.admin, &package(&stranger, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        assert_eq!(st, 422, "{e}");
        let (st, e) = s.upload(&s.admin, &package(&s.key, "fix-ns", BUILD_A, 2, Classification::NonSecurity, &[]));
        assert_eq!(st, 422);
        assert!(e["error"].as_str().unwrap_or("").contains("baseline"), "{e}");
        let (st, e) = s.upload(&s.admin, b"not a package");
        assert_eq!(st, 422, "{e}");
        // Nothing was stored by the rejected uploads.
        assert_eq!(s.get("/api/v1/hotpatches", &s.admin).1["hotpatches"].as_array().map(Vec::len), Some(0));
        let (st, r) = s.upload(&s.admin, &good);
        assert_eq!((st, r["created"].as_bool()), (200, Some(true)), "{r}");
        let (st, r) = s.upload(&s.admin, &good);
        assert_eq!((st, r["created"].as_bool()), (200, Some(false)));
        let other = package(&s.key, "fix-1b", BUILD_A, 1, Classification::Security, &[]);
        assert_eq!(s.upload(&s.admin, &other).0, 409);
        // Served by content hash, bytes identical.
        let sha = r["artifact_sha256"].as_str().unwrap_or_default();
        let resp = ureq::get(&format!("{}/api/v1/artifacts/{sha}", s.base))
            .set("Authorization", &format!("Bearer {}", s.admin))
            .call();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.expect("artifact").into_reader(), &mut bytes).expect("read");
        assert_eq!(bytes, good);
        assert_eq!(s.get("/api/v1/artifacts/zz", &s.admin).0, 400);
        // Baselines and the calendar.
        let (st, e) = s.post(
            "/api/v1/baselines",
            &s.admin,
            json!({ "name": "2027.07", "product": "demo", "released": "2027-07-13T00:00:00Z",
            "targets": [{ "file_name": "libdemo.so.1", "build_id": BUILD_A }] }),
        );
        assert_eq!(st, 200, "{e}");
        let (_, bl) = s.get("/api/v1/baselines", &s.admin);
        assert_eq!(bl["baselines"][0]["covered_until"], json!("2027-10-11"), "{bl}");
        let (st, cal) = s.get("/api/v1/calendar?year=2027", &s.admin);
        assert_eq!(st, 200);
        let kinds: Vec<&str> =
            cal["months"].as_array().map(|m| m.iter().filter_map(|x| x["kind"].as_str()).collect()).unwrap_or_default();
        assert_eq!(kinds[6..10], ["baseline", "hotpatch", "hotpatch", "baseline"]);
    }
}

fn deploy(s: &TestServer, body: serde_json::Value) -> String {
    let (st, d) = s.post("/api/v1/deployments", &s.admin, body);
    assert_eq!(st, 200, "{d}");
    d["id"].as_str().unwrap_or_default().to_string()
}

#[test]
fn check_in_offers_deployed_hotpatches_with_etag() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (_, cred) = s.enroll(&["web"], "web-1");
        let body = checkin_body("web-1", 4, &[(BUILD_A, "libdemo.so.1", 0)], json!([]));
        let url = format!("{}/api/v1/agent/checkin", s.base);
        let (st, a, etag) = call("POST", &url, Some(&cred), Some(&body));
        assert_eq!(st, 200);
        assert_eq!(a["hotpatches"], json!([]));
        let etag = etag.expect("etag");
        let bytes = serde_json::to_vec(&body).expect("json");
        let r = common::sign_request(ureq::post(&url), &cred, &url, &bytes)
            .set("If-None-Match", &etag)
            .send_bytes(&bytes)
            .expect("304");
        assert_eq!(r.status(), 304);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &["CVE-2027-0001"]));
        s.upload(&s.admin, &package(&s.key, "fix-2", BUILD_A, 2, Classification::Critical, &["CVE-2027-0002"]));
        let id = deploy(
            &s,
            json!({ "name": "fix-2-web", "kind": "hotpatch", "patch_id": "fix-2", "scope": { "tags": ["web"] },
            "rings": { "canary_percent": 100, "soak_seconds": 0, "failure_threshold_percent": 50 } }),
        );
        let (st, a, etag2) = call("POST", &url, Some(&cred), Some(&body));
        assert_eq!(st, 200);
        assert_ne!(etag2.as_deref(), Some(etag.as_str()));
        let work = &a["hotpatches"][0];
        assert_eq!(
            (work["patch_id"].as_str(), work["level"].as_i64(), work["deployment_id"].as_str()),
            (Some("fix-2"), Some(2), Some(id.as_str())),
            "{a}"
        );
        // A machine outside the scope gets nothing.
        let (_, db_cred) = s.enroll(&["db"], "db-1");
        let (_, a, _) = call(
            "POST",
            &url,
            Some(&db_cred),
            Some(&checkin_body("db-1", 4, &[(BUILD_A, "libdemo.so.1", 0)], json!([]))),
        );
        assert_eq!(a["hotpatches"], json!([]));
        // Reporting success at level 2: nothing more to do, compliance says applied.
        let done = checkin_body(
            "web-1",
            4,
            &[(BUILD_A, "libdemo.so.1", 2)],
            json!([{ "deployment_id": id, "status": "applied", "detail": "ok" }]),
        );
        let (st, a, _) = call("POST", &url, Some(&cred), Some(&done));
        assert_eq!((st, a["hotpatches"].clone()), (200, json!([])));
        let (_, c) = s.get("/api/v1/compliance/machines", &s.admin);
        let row =
            c["rows"].as_array().and_then(|r| r.iter().find(|x| x["hostname"] == "web-1")).cloned().unwrap_or_default();
        assert_eq!(row["status"], json!("applied"), "{c}");
        let db_row =
            c["rows"].as_array().and_then(|r| r.iter().find(|x| x["hostname"] == "db-1")).cloned().unwrap_or_default();
        assert_eq!(db_row["status"], json!("pending"), "{c}");
        let (_, cves) = s.get("/api/v1/compliance/cves", &s.admin);
        let c2 = cves["cves"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["cve"] == "CVE-2027-0002"))
            .cloned()
            .unwrap_or_default();
        assert_eq!((c2["fixed"].as_i64(), c2["open"].as_i64()), (Some(1), Some(1)), "{cves}");
        let csv = ureq::get(&format!("{}/api/v1/compliance/machines?format=csv", s.base))
            .set("Authorization", &format!("Bearer {}", s.admin))
            .call()
            .expect("csv")
            .into_string()
            .unwrap_or_default();
        assert!(
            csv.starts_with(
                "machine_id,hostname,file_name,build_id,applied_level,latest_level,status,detail,open_cves\n"
            ),
            "{csv}"
        );
        assert!(csv.lines().any(|l| l.contains(",web-1,libdemo.so.1,") && l.contains(",applied,")), "{csv}");
        let (_, h) = s.get(&format!("/api/v1/deployments/{id}"), &s.admin);
        assert_eq!(h["rings"]["canary"]["applied"], json!(1), "{h}");
        let (_, o) = s.get("/api/v1/compliance/overview", &s.admin);
        assert_eq!((o["hotpatched"].as_i64(), o["pending"].as_i64()), (Some(1), Some(1)), "{o}");
    }
}

#[test]
fn rings_soak_and_failure_threshold_halt() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let url = format!("{}/api/v1/agent/checkin", s.base);
        let body = checkin_body("m", 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([]));
        // No canary share and a day of soak: nobody is offered anything yet.
        deploy(
            &s,
            json!({ "name": "slow", "kind": "hotpatch", "patch_id": "fix-1", "rings": { "canary_percent": 0, "soak_seconds": 86400 } }),
        );
        let (_, cred) = s.enroll(&[], "m");
        assert_eq!(call("POST", &url, Some(&cred), Some(&body)).1["hotpatches"], json!([]));
        // Started two days ago: the soak is over, the rest ring gets it.
        s.sql("UPDATE deployments SET start_at = start_at - 172800");
        let (_, a, _) = call("POST", &url, Some(&cred), Some(&body));
        assert_eq!(a["hotpatches"][0]["patch_id"], json!("fix-1"), "{a}");
        let id = a["hotpatches"][0]["deployment_id"].as_str().unwrap_or_default().to_string();
        // One failure out of one is above the 10% threshold: halted, nobody else is offered it.
        let failed = checkin_body(
            "m",
            2,
            &[(BUILD_A, "libdemo.so.1", 0)],
            json!([{ "deployment_id": id, "status": "failed", "detail": "busy" }]),
        );
        assert_eq!(call("POST", &url, Some(&cred), Some(&failed)).0, 200);
        let (_, d) = s.get(&format!("/api/v1/deployments/{id}"), &s.admin);
        assert_eq!(d["state"], json!("halted"), "{d}");
        assert!(d["state_reason"].as_str().unwrap_or("").contains("threshold"), "{d}");
        let (_, other) = s.enroll(&[], "m2");
        let body = checkin_body("m2", 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([]));
        assert_eq!(call("POST", &url, Some(&other), Some(&body)).1["hotpatches"], json!([]));
        let (_, c) = s.get("/api/v1/compliance/machines", &s.admin);
        let row =
            c["rows"].as_array().and_then(|r| r.iter().find(|x| x["hostname"] == "m")).cloned().unwrap_or_default();
        assert_eq!(row["status"], json!("apply-failed"), "{c}");
        assert_eq!(s.post(&format!("/api/v1/deployments/{id}/resume"), &s.admin, json!({})).0, 200);
        assert_eq!(call("POST", &url, Some(&other), Some(&body)).1["hotpatches"][0]["patch_id"], json!("fix-1"));
        let (_, a) = s.get("/api/v1/audit", &s.admin);
        assert!(
            a["entries"]
                .as_array()
                .is_some_and(|v| { v.iter().any(|e| e["action"] == "deployment.halt" && e["actor"] == "system") })
        );
    }
}

#[test]
fn maintenance_windows_gate_hotpatches_and_baselines_ask_for_restart() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        // A one-minute window on one weekday, far from now most of the week; pick a day that is not today.
        let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).weekday();
        let other_day =
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][(today.to_monday_zero_offset() as usize + 3) % 7];
        let (st, e) = s.post(
            "/api/v1/maintenance-windows",
            &s.admin,
            json!({ "name": "rare", "days": [other_day], "start": "03:00", "duration_minutes": 1, "time_zone": "UTC" }),
        );
        assert_eq!(st, 200, "{e}");
        assert_eq!(s.post("/api/v1/maintenance-windows", &s.admin, json!({ "name": "bad", "days": ["mon"], "start": "03:00", "duration_minutes": 1, "time_zone": "Mars/Olympus" })).0, 400);
        deploy(
            &s,
            json!({ "name": "w", "kind": "hotpatch", "patch_id": "fix-1", "window": "rare", "rings": { "canary_percent": 100 } }),
        );
        let (_, cred) = s.enroll(&[], "m");
        let url = format!("{}/api/v1/agent/checkin", s.base);
        let (_, a, _) =
            call("POST", &url, Some(&cred), Some(&checkin_body("m", 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([]))));
        assert_eq!(a["hotpatches"], json!([]));
        assert!(a["notes"][0].as_str().unwrap_or("").contains("maintenance window rare"), "{a}");
        // A newer baseline ships another build of the file: restart required.
        s.post(
            "/api/v1/baselines",
            &s.admin,
            json!({ "name": "2027.10", "product": "demo", "released": "2020-10-06T00:00:00Z",
            "targets": [{ "file_name": "libdemo.so.1", "build_id": BUILD_B }] }),
        );
        deploy(
            &s,
            json!({ "name": "b", "kind": "baseline", "baseline": "2027.10", "rings": { "canary_percent": 100 }, "reboot_policy": "if-required" }),
        );
        let (_, a, _) =
            call("POST", &url, Some(&cred), Some(&checkin_body("m", 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([]))));
        let bw = &a["baselines"][0];
        assert_eq!((bw["baseline"].as_str(), bw["restart"].as_bool()), (Some("2027.10"), Some(true)), "{a}");
        assert_eq!(bw["reason"], json!("baseline 2027.10 is out"));
        let (_, c) = s.get("/api/v1/compliance/machines", &s.admin);
        assert_eq!(c["rows"][0]["status"], json!("needs-restart"), "{c}");
    }
}

#[test]
fn unentitled_orgs_get_baselines_only_and_invoices_prorate() {
    for b in backends() {
        let s = TestServer::start(&b);
        let poor = s.create_org("poor", None);
        s.upload(&poor, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let (st, d) = s.post(
            "/api/v1/deployments",
            &poor,
            json!({ "name": "d", "kind": "hotpatch", "patch_id": "fix-1", "rings": { "canary_percent": 100 } }),
        );
        assert_eq!(st, 200, "{d}");
        let (_, t) = s.post("/api/v1/enrollment-tokens", &poor, json!({}));
        let (_, cred) = s.enroll_with(t["token"].as_str().unwrap_or_default(), "p1").expect("enroll");
        let url = format!("{}/api/v1/agent/checkin", s.base);
        let body = checkin_body("p1", 8, &[(BUILD_A, "libdemo.so.1", 0)], json!([]));
        let (_, a, _) = call("POST", &url, Some(&cred), Some(&body));
        assert_eq!((a["entitled"].as_bool(), a["hotpatches"].clone()), (Some(false), json!([])), "{a}");
        assert!(a["notes"][0].as_str().unwrap_or("").contains("not entitled"), "{a}");
        // Subscribing entitles the organisation at once.
        // An org admin cannot entitle its own organisation; the operator can.
        let (st, e) = s.put("/api/v1/billing/subscription", &poor, json!({ "active": true }));
        assert_eq!(st, 403, "{e}");
        assert!(e["error"].as_str().unwrap_or("").contains("service operator"), "{e}");
        let change = hotpatch_server::api::billing::SubscriptionChange { active: Some(true), ..Default::default() };
        let (sub, entitled) = s
            .rt()
            .block_on(hotpatch_server::api::billing::change_subscription(&s.state.db, "poor", &change, "operator:test"))
            .expect("operator subscribes");
        assert!(entitled && sub.price_cents_per_core_month == 150, "{sub:?}");
        let (_, a, _) = call("POST", &url, Some(&cred), Some(&body));
        assert_eq!(a["hotpatches"][0]["patch_id"], json!("fix-1"));
        // Metering: today 8 cores; invoice = 8 core-days * 150 cents / days in month.
        let month = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).strftime("%Y-%m").to_string();
        let days = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).days_in_month() as i64;
        let (st, inv) = s.get(&format!("/api/v1/billing/invoices/{month}"), &poor);
        assert_eq!(st, 200, "{inv}");
        assert_eq!(inv["core_days"], json!(8), "{inv}");
        assert_eq!(inv["amount_cents"], json!((8 * 150 + days / 2) / days), "{inv}");
        // A trial makes the same days free.
        let trial = hotpatch_server::api::billing::SubscriptionChange {
            trial_until: Some(Some("2999-01-01T00:00:00Z".into())),
            ..Default::default()
        };
        s.rt()
            .block_on(hotpatch_server::api::billing::change_subscription(&s.state.db, "poor", &trial, "operator:test"))
            .expect("operator sets a trial");
        let (_, inv) = s.get(&format!("/api/v1/billing/invoices/{month}"), &poor);
        assert_eq!(
            (inv["core_days"].as_i64(), inv["trial_core_days"].as_i64(), inv["amount_cents"].as_i64()),
            (Some(0), Some(8), Some(0)),
            "{inv}"
        );
        assert_eq!(s.get("/api/v1/billing/invoices/2027-13", &poor).0, 400);
    }
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    for b in backends() {
        let s = TestServer::start(&b);
        let url = format!("{}/api/v1/enrollment-tokens", s.base);
        let send = |body: &str| {
            let r = ureq::post(&url)
                .set("Authorization", &format!("Bearer {}", s.admin))
                .set("Content-Type", "application/json")
                .send_string(body);
            let r = match r {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => panic!("{e}"),
            };
            let st = r.status();
            (st, serde_json::from_str::<serde_json::Value>(&r.into_string().unwrap_or_default()).unwrap_or_default())
        };
        let (st, e) = send("{\"tags\": [");
        assert_eq!(st, 400, "{e}");
        assert!(e["error"].as_str().is_some());
        let (st, e) = send("{\"tags\": [], \"admin\": true}");
        assert_eq!(st, 422);
        assert!(e["error"].as_str().unwrap_or("").contains("unknown field `admin`"), "{e}");
        // One byte over the limit, so the server has read every byte when it refuses
        // (unread bytes would make the close race the answer).
        let limit = hotpatch_server::api::JSON_BODY_LIMIT;
        let filler = "a".repeat(limit + 1 - "{\"tags\": [\"\"]}".len());
        let big = format!("{{\"tags\": [\"{filler}\"]}}");
        assert_eq!(big.len(), limit + 1);
        let (st, e) = send(&big);
        assert_eq!(st, 413, "{e}");
        assert!(e["error"].as_str().unwrap_or("").contains("too large"), "{e}");
        let (st, e) = send("{\"tags\": [\"bad tag\"]}");
        assert_eq!(st, 400, "{e}");
        let (_, cred) = s.enroll(&[], "m");
        let (st, e) = s.post("/api/v1/agent/checkin", &cred, checkin_body("m", 0, &[], json!([])));
        assert_eq!(st, 400);
        assert!(e["error"].as_str().unwrap_or("").contains("cores"), "{e}");
        let (st, e) = s.post("/api/v1/agent/checkin", &cred, checkin_body("m", 2, &[("XYZ", "f", 0)], json!([])));
        assert_eq!(st, 400, "{e}");
        // A result for a deployment that does not exist rolls the whole check-in back.
        let bad = checkin_body(
            "renamed",
            2,
            &[(BUILD_A, "libdemo.so.1", 0)],
            json!([{ "deployment_id": "nope", "status": "applied", "detail": "" }]),
        );
        assert_eq!(s.post("/api/v1/agent/checkin", &cred, bad).0, 404);
        let (_, list) = s.get("/api/v1/machines", &s.admin);
        assert_eq!(list["machines"][0]["hostname"], json!("m"), "no partial write: {list}");
        assert_eq!(s.get("/api/v1/nope", &s.admin).0, 404);
        // Tokens made so far: only the one from enroll(); the rejected requests left nothing.
        let (_, a) = s.get("/api/v1/audit", &s.admin);
        let made =
            a["entries"].as_array().map(|v| v.iter().filter(|e| e["action"] == "enrollment-token.create").count());
        assert_eq!(made, Some(1));
        assert_eq!(s.get("/healthz", "").0, 200);
        let (st, doc) = s.get("/openapi.json", "");
        assert_eq!(st, 200);
        assert!(doc["paths"]["/api/v1/agent/checkin"].is_object(), "openapi documents check-in");
    }
}

#[test]
fn replicas_share_one_database() {
    let Some(pg) = backends().into_iter().find(|b| matches!(b, Backend::Postgres(_))) else {
        eprintln!("PostgreSQL skipped: replicas test needs HOTPATCH_TEST_POSTGRES_URL");
        return;
    };
    let a = TestServer::start(&pg);
    let b = a.replica();
    let (_, t) = a.post("/api/v1/enrollment-tokens", &a.admin, json!({}));
    let token = t["token"].as_str().unwrap_or_default();
    let (_, cred) = b.enroll_with(token, "r1").expect("enroll on replica b");
    assert_eq!(a.enroll_with(token, "r2").expect_err("token used on the other replica").0, 401);
    a.upload(&a.admin, &package(&a.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
    let (st, _) = b.post(
        "/api/v1/deployments",
        &b.admin,
        json!({ "name": "d", "kind": "hotpatch", "patch_id": "fix-1", "rings": { "canary_percent": 100 } }),
    );
    assert_eq!(st, 200);
    let (_, ans) =
        a.post("/api/v1/agent/checkin", &cred, checkin_body("r1", 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([])));
    assert_eq!(ans["hotpatches"][0]["patch_id"], json!("fix-1"));
}

/// Compliance follows the release model (`hotpatch_release::decide`) once the
/// running build's baseline is registered: a hotpatch is pending, then applied,
/// and an unplanned baseline asks for a restart. (A fix that is not hotpatchable
/// never reaches the catalog as a hotpatch: uploads refuse it.)
#[test]
fn compliance_follows_the_release_model() {
    for b in backends() {
        let s = TestServer::start(&b);
        let url = format!("{}/api/v1/agent/checkin", s.base);
        let (_, cred) = s.enroll(&[], "m");
        let row = |level: u32| {
            call(
                "POST",
                &url,
                Some(&cred),
                Some(&checkin_body("m", 2, &[(BUILD_A, "libdemo.so.1", level)], json!([]))),
            );
            let (_, c) = s.get("/api/v1/compliance/machines", &s.admin);
            c["rows"][0].clone()
        };
        let (st, e) = s.post(
            "/api/v1/baselines",
            &s.admin,
            json!({ "name": "2020.01", "product": "demo", "released": "2020-01-14T00:00:00Z",
            "targets": [{ "file_name": "libdemo.so.1", "build_id": BUILD_A }] }),
        );
        assert_eq!(st, 200, "{e}");
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &["CVE-2027-0001"]));
        let r = row(0);
        assert_eq!(r["status"], json!("pending"), "{r}");
        assert!(r["detail"].as_str().unwrap_or("").contains("fixes CVE-2027-0001 without a restart"), "{r}");
        let r = row(1);
        assert_eq!(r["status"], json!("applied"), "{r}");
        assert!(r["detail"].as_str().unwrap_or("").contains("up to date"), "{r}");
        // An unplanned baseline ships a new build: restart.
        let yesterday = hotpatch_server::util::rfc3339(hotpatch_server::util::now() - 86_400);
        let (st, e) = s.post(
            "/api/v1/baselines",
            &s.admin,
            json!({ "name": "2026.zd1", "product": "demo", "released": yesterday, "planned": false,
            "reason": "zero-day in the parser", "targets": [{ "file_name": "libdemo.so.1", "build_id": BUILD_B }] }),
        );
        assert_eq!(st, 200, "{e}");
        let r = row(1);
        assert_eq!(r["status"], json!("needs-restart"), "{r}");
        assert!(r["detail"].as_str().unwrap_or("").contains("unplanned baseline 2026.zd1"), "{r}");
    }
}

/// A month's invoice is closed after the month ends and stored: a later price
/// change does not rewrite it, two replicas close it once, and the list shows
/// closed months and the open one.
#[test]
fn closed_invoices_are_stored_as_issued() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (_, who) = s.get("/api/v1/whoami", &s.admin);
        let org = who["org_id"].as_str().unwrap_or_default().to_string();
        let (mid, _) = s.enroll(&[], "m");
        let now = hotpatch_server::util::now();
        let this_month = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date().first_of_month();
        let last_month = this_month.checked_sub(jiff::Span::new().months(1)).expect("date");
        let (first, days) =
            hotpatch_server::domain::metering::month_days(&last_month.strftime("%Y-%m").to_string()).expect("month");
        // The organisation, its subscription and 4 cores on 3 days, all last month.
        s.sql(&format!("UPDATE orgs SET created = {} WHERE id = '{org}'", first * 86_400));
        s.sql(&format!(
            "UPDATE subscriptions SET active_from = {}, active_until = NULL, trial_until = NULL, \
             price_cents_per_core_month = 150, updated = {now} WHERE org_id = '{org}'",
            first * 86_400
        ));
        for d in 0..3 {
            s.sql(&format!(
                "INSERT INTO usage_days (machine_id, org_id, day, cores) VALUES ('{mid}', '{org}', {}, 4)",
                first + d
            ));
        }
        let month = last_month.strftime("%Y-%m").to_string();
        let (st, inv) = s.get(&format!("/api/v1/billing/invoices/{month}"), &s.admin);
        assert_eq!(st, 200, "{inv}");
        let expected = (12 * 150 + days / 2) / days;
        assert_eq!((inv["status"].as_str(), inv["amount_cents"].as_i64()), (Some("closed"), Some(expected)), "{inv}");
        // The operator raises the price; the closed invoice stays as issued.
        let dearer = hotpatch_server::api::billing::SubscriptionChange {
            price_cents_per_core_month: Some(300),
            ..Default::default()
        };
        s.rt()
            .block_on(hotpatch_server::api::billing::change_subscription(&s.state.db, "acme", &dearer, "operator:test"))
            .expect("price change");
        let again = s.get(&format!("/api/v1/billing/invoices/{month}"), &s.admin).1;
        assert_eq!(again, inv, "a closed invoice never changes");
        let (_, list) = s.get("/api/v1/billing/invoices", &s.admin);
        let statuses: Vec<&str> = list["invoices"]
            .as_array()
            .map(|v| v.iter().filter_map(|i| i["status"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(statuses, ["open", "closed"], "{list}");
        let (_, audit) = s.get("/api/v1/audit", &s.admin);
        let closes =
            audit["entries"].as_array().map_or(0, |v| v.iter().filter(|e| e["action"] == "invoice.close").count());
        assert_eq!(closes, 1, "{audit}");
        // Before the organisation existed there is nothing to bill.
        assert_eq!(s.get("/api/v1/billing/invoices/2001-01", &s.admin).0, 404);
    }
}

/// An organisation sets its own cadence; the calendar and baseline coverage
/// follow it, and a bad cadence is refused by name.
#[test]
fn release_calendar_is_configurable_per_organisation() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (st, e) = s.put(
            "/api/v1/calendar",
            &s.admin,
            json!({ "baseline_months": [3, 9], "patch_day": { "rule": "day-of-month", "day": 5 } }),
        );
        assert_eq!(st, 200, "{e}");
        let (_, cal) = s.get("/api/v1/calendar?year=2027", &s.admin);
        let kinds: Vec<&str> =
            cal["months"].as_array().map(|m| m.iter().filter_map(|x| x["kind"].as_str()).collect()).unwrap_or_default();
        assert_eq!(kinds.iter().filter(|k| **k == "baseline").count(), 2, "{cal}");
        assert_eq!((kinds[2], kinds[8], kinds[3]), ("baseline", "baseline", "hotpatch"), "{cal}");
        assert_eq!(cal["months"][2]["release_date"], json!("2027-03-05"), "{cal}");
        // A baseline released in March is covered until the day before September's.
        let (st, e) = s.post(
            "/api/v1/baselines",
            &s.admin,
            json!({ "name": "2027.03", "product": "demo", "released": "2027-03-05T00:00:00Z",
            "targets": [{ "file_name": "libdemo.so.1", "build_id": BUILD_A }] }),
        );
        assert_eq!(st, 200, "{e}");
        let (_, bl) = s.get("/api/v1/baselines", &s.admin);
        assert_eq!(bl["baselines"][0]["covered_until"], json!("2027-09-04"), "{bl}");
        // Another organisation keeps the default quarterly calendar.
        let other = s.create_org("other", Some(30));
        let (_, cal) = s.get("/api/v1/calendar?year=2027", &other);
        assert_eq!(cal["months"][3]["kind"], json!("baseline"), "{cal}");
        // Bad input: a month that does not exist, an unknown field; nothing changes.
        let (st, e) = s.put("/api/v1/calendar", &s.admin, json!({ "baseline_months": [13] }));
        assert_eq!(st, 400, "{e}");
        assert!(e["error"].as_str().unwrap_or("").contains("13"), "{e}");
        assert_eq!(s.put("/api/v1/calendar", &s.admin, json!({ "baseline_months": [1], "x": 1 })).0, 422);
        let (_, cal) = s.get("/api/v1/calendar?year=2027", &s.admin);
        assert_eq!(cal["config"]["baseline_months"], json!([3, 9]), "{cal}");
    }
}

/// Creating the same name from many clients at once: exactly one wins, every
/// other gets a 409 (never a 5xx), whichever check stops it.
#[test]
fn racing_creates_of_one_name_get_one_success_and_conflicts() {
    for b in backends() {
        let s = TestServer::start(&b);
        let url = format!("{}/api/v1/queries", s.base);
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        call("POST", &url, Some(&s.admin), Some(&json!({ "name": "web", "query": "tag:web" }))).0
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("client thread")).collect()
        });
        assert_eq!(statuses.iter().filter(|&&st| st == 200).count(), 1, "{statuses:?}");
        assert!(statuses.iter().all(|&st| st == 200 || st == 409), "{statuses:?}");
    }
}

/// Every route the API serves, with each of its methods, is documented in
/// /openapi.json (read from the router's source, so a new route without docs fails).
#[test]
fn openapi_documents_every_route() {
    let source = include_str!("../src/api/mod.rs");
    let doc: Value = serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON");
    let mut checked = 0;
    for chunk in source.split(".route(").skip(1) {
        let Some(path) = chunk.strip_prefix('"').and_then(|c| c.split('"').next()) else { continue };
        if !path.starts_with("/api/") {
            continue;
        }
        let end = chunk.find("\n        .route(").unwrap_or(chunk.len());
        for method in ["get", "post", "put", "delete"] {
            if chunk[..end].contains(&format!("{method}(")) {
                assert!(
                    doc["paths"][path][method].is_object(),
                    "{} {path} is not in openapi.json",
                    method.to_uppercase()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 30, "only {checked} routes found: has the router's source changed shape?");
}

#[test]
fn trusted_keys_are_managed_per_organisation_without_a_restart() {
    for b in backends() {
        let s = TestServer::start(&b);
        let publisher = SecretKey::from_seed([11u8; 32]);
        let key_id = publisher.public().id_hex();
        let signed = |patch: &str, level| package(&publisher, patch, BUILD_B, level, Classification::Security, &[]);
        let operator = s.user_token("olga", "operator");
        let body = json!({ "label": "vendor", "public_key": publisher.public().to_text() });
        assert_eq!(s.post("/api/v1/trusted-keys", &operator, body.clone()).0, 403, "admins only");
        assert_eq!(s.upload(&s.admin, &signed("v-1", 1)).0, 422);
        let (st, k) = s.post("/api/v1/trusted-keys", &s.admin, body.clone());
        assert_eq!((st, k["key_id"].as_str()), (200, Some(key_id.as_str())), "{k}");
        assert_eq!(s.post("/api/v1/trusted-keys", &s.admin, body.clone()).0, 409, "already trusted");
        let (st, e) = s.post("/api/v1/trusted-keys", &s.admin, json!({ "label": "x", "public_key": "nonsense" }));
        assert_eq!(st, 400, "{e}");
        assert_eq!(s.upload(&s.admin, &signed("v-1", 1)).0, 200, "trusted at once");
        let (_, list) = s.get("/api/v1/trusted-keys", &operator);
        let sources: Vec<&str> = list["keys"]
            .as_array()
            .map(|k| k.iter().filter_map(|x| x["source"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(sources, ["server", "organisation"], "{list}");
        // Another organisation does not trust it.
        let other = s.create_org("other", Some(30));
        assert_eq!(s.upload(&other, &signed("v-1", 1)).0, 422);
        let server_key = s.key.public().id_hex();
        let del = |id: &str| call("DELETE", &format!("{}/api/v1/trusted-keys/{id}", s.base), Some(&s.admin), None).0;
        assert_eq!(del(&server_key), 409, "the server's own key changes only in its files");
        assert_eq!(del(&key_id), 200);
        assert_eq!(del(&key_id), 404);
        assert_eq!(s.upload(&s.admin, &signed("v-2", 2)).0, 422, "revoked at once");
        // Trusting it again is a new decision.
        assert_eq!(s.post("/api/v1/trusted-keys", &s.admin, body).0, 200);
    }
}

#[test]
fn a_deployment_pauses_and_resumes_through_the_api() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let (_, d) =
            s.post("/api/v1/deployments", &s.admin, json!({ "name": "d", "kind": "hotpatch", "patch_id": "fix-1" }));
        let id = d["id"].as_str().unwrap_or_default().to_string();
        let act = |a: &str| s.post(&format!("/api/v1/deployments/{id}/{a}"), &s.admin, json!({})).0;
        assert_eq!(act("resume"), 409, "an active deployment does not resume");
        assert_eq!(act("pause"), 200);
        assert_eq!(act("pause"), 409);
        assert_eq!(s.get(&format!("/api/v1/deployments/{id}"), &s.admin).1["state"], json!("paused"));
        assert_eq!(act("resume"), 200);
        assert_eq!(act("cancel"), 200);
        assert_eq!(act("resume"), 409, "cancelled is final");
    }
}
