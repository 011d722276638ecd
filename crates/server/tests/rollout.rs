//! Rollout features end to end on loopback (SQLite, and PostgreSQL when
//! configured): tiers, promotion and pins deciding what a check-in offers; a
//! maintenance window that ends mid-rollout ("window exceeded"); history
//! retention.

mod common;

use common::*;
use hotpatch_format::Classification;
use serde_json::{Value, json};

fn check_in(s: &TestServer, cred: &str, host: &str, level: u32) -> Value {
    let url = format!("{}/api/v1/agent/checkin", s.base);
    let (st, a, _) =
        call("POST", &url, Some(cred), Some(&checkin_body(host, 2, &[(BUILD_A, "libdemo.so.1", level)], json!([]))));
    assert_eq!(st, 200, "{a}");
    a
}

fn offered(a: &Value) -> Vec<String> {
    a["hotpatches"]
        .as_array()
        .map(|h| h.iter().filter_map(|w| w["patch_id"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn notes(a: &Value) -> String {
    a["notes"]
        .as_array()
        .map(|n| n.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "))
        .unwrap_or_default()
}

fn delete(s: &TestServer, path: &str) -> (u16, Value) {
    let (st, v, _) = call("DELETE", &format!("{}{path}", s.base), Some(&s.admin), None);
    (st, v)
}

#[test]
fn tiers_promotion_and_pins_decide_what_is_offered() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-2", BUILD_A, 2, Classification::Security, &["CVE-2027-0002"]));
        let (st, d) = s.post(
            "/api/v1/deployments",
            &s.admin,
            json!({ "name": "fix-2", "kind": "hotpatch", "patch_id": "fix-2",
                    "rings": { "canary_percent": 100, "soak_seconds": 0 } }),
        );
        assert_eq!(st, 200, "{d}");
        let (stable_id, stable) = s.enroll(&["web"], "stable-1");
        let (edge_id, edge) = s.enroll(&["db"], "edge-1");
        // No tiers: offered as before tiers existed.
        assert_eq!(offered(&check_in(&s, &stable, "stable-1", 0)), ["fix-2"]);

        // Refused tier lists change nothing.
        let (st, e) = s.put("/api/v1/tiers", &s.admin, json!({ "tiers": [{ "name": "a" }, { "name": "a" }] }));
        assert_eq!((st, e["error"].as_str().is_some_and(|m| m.contains("named twice"))), (400, true), "{e}");
        assert_eq!(s.get("/api/v1/tiers", &s.admin).1["tiers"], json!([]));
        let (st, e) = s.post("/api/v1/hotpatches/fix-2/promote", &s.admin, json!({}));
        assert_eq!(st, 409, "no tiers yet: {e}");

        let tiers = json!({ "tiers": [{ "name": "edge" }, { "name": "stable", "deploy_after_hours": 24 }] });
        assert_eq!(s.put("/api/v1/tiers", &s.admin, tiers).0, 200);
        assert_eq!(s.put(&format!("/api/v1/machines/{edge_id}/tier"), &s.admin, json!({ "tier": "edge" })).0, 200);
        assert_eq!(s.put(&format!("/api/v1/machines/{edge_id}/tier"), &s.admin, json!({ "tier": "nope" })).0, 404);
        // Not promoted anywhere yet: nobody gets it, and the note says why.
        let a = check_in(&s, &edge, "edge-1", 0);
        assert!(offered(&a).is_empty() && notes(&a).contains("not yet promoted to tier edge"), "{a}");
        let a = check_in(&s, &stable, "stable-1", 0);
        assert!(notes(&a).contains("not yet promoted to tier stable"), "{a}");

        // Promoted to the next tier (edge): edge machines at once, the rest still not.
        let (st, p) = s.post("/api/v1/hotpatches/fix-2/promote", &s.admin, json!({}));
        assert_eq!((st, p["tier"].clone()), (200, json!("edge")), "{p}");
        assert_eq!(offered(&check_in(&s, &edge, "edge-1", 0)), ["fix-2"]);
        let a = check_in(&s, &stable, "stable-1", 0);
        assert!(offered(&a).is_empty() && notes(&a).contains("it has reached tier edge"), "{a}");

        // Stable deploys 24 h after its promotion.
        assert_eq!(s.post("/api/v1/hotpatches/fix-2/promote", &s.admin, json!({ "tier": "stable" })).0, 200);
        let a = check_in(&s, &stable, "stable-1", 0);
        assert!(offered(&a).is_empty() && notes(&a).contains("deploys it after 24 h"), "{a}");
        s.sql("UPDATE promotions SET at = at - 90000 WHERE tier = 'stable'");
        assert_eq!(offered(&check_in(&s, &stable, "stable-1", 0)), ["fix-2"]);
        let (st, e) = s.post("/api/v1/hotpatches/fix-2/promote", &s.admin, json!({}));
        assert_eq!(st, 409, "already in the last tier: {e}");
        assert_eq!(s.post("/api/v1/hotpatches/nope/promote", &s.admin, json!({ "tier": "edge" })).0, 404);

        // A pin holds the db machines at level 1 of the build, whatever their tier.
        let (st, pin) = s.post("/api/v1/pins", &s.admin, json!({ "tag": "db", "build_id": BUILD_A, "level": 1 }));
        assert_eq!(st, 200, "{pin}");
        let a = check_in(&s, &edge, "edge-1", 0);
        assert!(offered(&a).is_empty() && notes(&a).contains("held at level 1 by the pin on tag db"), "{a}");
        assert_eq!(offered(&check_in(&s, &stable, "stable-1", 0)), ["fix-2"]);
        let (st, e) =
            s.post("/api/v1/pins", &s.admin, json!({ "tag": "db", "query": "q", "build_id": BUILD_A, "level": 1 }));
        assert_eq!(st, 400, "{e}");
        // A saved query that scopes a pin cannot be deleted while the pin stands.
        assert_eq!(s.post("/api/v1/queries", &s.admin, json!({ "name": "dbs", "query": "tag:db" })).0, 200);
        let (st, qpin) = s.post("/api/v1/pins", &s.admin, json!({ "query": "dbs", "build_id": BUILD_A, "level": 0 }));
        assert_eq!(st, 200, "{qpin}");
        assert_eq!(delete(&s, "/api/v1/queries/dbs").0, 409);
        for p in [&pin, &qpin] {
            assert_eq!(delete(&s, &format!("/api/v1/pins/{}", p["id"].as_str().unwrap_or_default())).0, 200);
        }
        assert_eq!(offered(&check_in(&s, &edge, "edge-1", 0)), ["fix-2"]);

        // A tier machines are in cannot be dropped.
        let (st, e) = s.put("/api/v1/tiers", &s.admin, json!({ "tiers": [{ "name": "stable" }] }));
        assert_eq!(st, 409, "{e}");
        let (_, t) = s.get("/api/v1/tiers", &s.admin);
        let machines: Vec<i64> = t["tiers"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x["machines"].as_i64()).collect())
            .unwrap_or_default();
        assert_eq!(machines, [1, 1], "{t}");
        assert_eq!(s.get(&format!("/api/v1/machines/{stable_id}"), &s.admin).1["tier"], Value::Null);

        let (_, audit) = s.get("/api/v1/audit", &s.admin);
        for action in ["tiers.set", "machine.tier", "hotpatch.promote", "pin.create", "pin.remove"] {
            assert!(
                audit["entries"].as_array().is_some_and(|v| v.iter().any(|e| e["action"] == action)),
                "{action} not audited: {audit}"
            );
        }
    }
}

/// A daily window that opened two hours ago for one hour: it ended mid-rollout.
fn window_ended_an_hour_ago(s: &TestServer, name: &str) {
    let start = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    let hhmm = start.strftime("%H:%M").to_string();
    let (st, e) = s.post(
        "/api/v1/maintenance-windows",
        &s.admin,
        json!({ "name": name, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": hhmm,
                "duration_minutes": 60, "time_zone": "UTC" }),
    );
    assert_eq!(st, 200, "{e}");
}

#[test]
fn a_window_ending_mid_rollout_marks_what_was_left() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        window_ended_an_hour_ago(&s, "nightly");
        let (_, late) = s.enroll(&[], "late-1");
        let (_, done) = s.enroll(&[], "done-1");
        let (_, other) = s.enroll(&[], "other-1");
        let start = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(3)).to_string();
        let (st, d) = s.post(
            "/api/v1/deployments",
            &s.admin,
            json!({ "name": "fix-1", "kind": "hotpatch", "patch_id": "fix-1", "window": "nightly", "start_at": start,
                    "rings": { "canary_percent": 100, "soak_seconds": 0 } }),
        );
        assert_eq!(st, 200, "{d}");
        let id = d["id"].as_str().unwrap_or_default().to_string();
        // done-1 applied it inside the window; other-1 does not run the target.
        let url = format!("{}/api/v1/agent/checkin", s.base);
        let body = checkin_body(
            "done-1",
            2,
            &[(BUILD_A, "libdemo.so.1", 1)],
            json!([{ "deployment_id": id, "status": "applied", "detail": "ok" }]),
        );
        assert_eq!(call("POST", &url, Some(&done), Some(&body)).0, 200);
        let url_body = checkin_body("other-1", 2, &[(BUILD_B, "libother.so", 0)], json!([]));
        assert_eq!(call("POST", &url, Some(&other), Some(&url_body)).0, 200);
        // late-1 checks in after the window closed: no new work, and told why.
        let a = check_in(&s, &late, "late-1", 0);
        assert!(offered(&a).is_empty(), "{a}");
        assert!(notes(&a).contains("window exceeded: maintenance window nightly ended at"), "{a}");
        assert!(notes(&a).contains("continues when the window opens next at"), "{a}");
        let (_, dep) = s.get(&format!("/api/v1/deployments/{id}"), &s.admin);
        let e = &dep["window_exceeded"];
        assert_eq!(e["machines_left"], json!(1), "{dep}");
        assert_eq!(e["machines"][0]["hostname"], json!("late-1"), "{dep}");
        assert!(e["continues_at"].is_string(), "{dep}");
        // Paused: nothing is left by the window, since nothing runs.
        assert_eq!(s.post(&format!("/api/v1/deployments/{id}/pause"), &s.admin, json!({})).0, 200);
        assert_eq!(s.get(&format!("/api/v1/deployments/{id}"), &s.admin).1["window_exceeded"], Value::Null);
        assert_eq!(s.post(&format!("/api/v1/deployments/{id}/resume"), &s.admin, json!({})).0, 200);
        // In the next window the rest continues: make the window open now.
        let now_start = (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5)).strftime("%H:%M").to_string();
        let minute: i64 = now_start[..2].parse::<i64>().unwrap_or(0) * 60 + now_start[3..].parse::<i64>().unwrap_or(0);
        s.sql(&format!("UPDATE maintenance_windows SET start_minute = {minute}, duration_minutes = 60"));
        assert_eq!(offered(&check_in(&s, &late, "late-1", 0)), ["fix-1"]);
        assert_eq!(s.get(&format!("/api/v1/deployments/{id}"), &s.admin).1["window_exceeded"], Value::Null);
    }
}

/// A work history row for `machine` at `at`, as a check-in records one.
fn history_row(id: &str, machine: &str, at: i64) -> String {
    format!(
        "INSERT INTO work_history (id, org_id, machine_id, deployment_id, status, detail, at) \
         VALUES ('{id}', 'o', '{machine}', 'd', 'applied', 'ok', {at})"
    )
}

fn history_ids(db: &hotpatch_server::Db, rt: &tokio::runtime::Runtime) -> Vec<String> {
    rt.block_on(sqlx::query_scalar::<_, String>("SELECT id FROM work_history ORDER BY id").fetch_all(&db.pool))
        .expect("read history")
}

#[test]
fn history_older_than_the_retention_is_pruned() {
    for b in backends() {
        let s = TestServer::start(&b);
        let now = hotpatch_server::util::now();
        for (id, days) in [("old", 91), ("edge", 89), ("new", 0)] {
            s.sql(&history_row(id, "m", now - days * 86_400));
        }
        let db = &s.state.db;
        let removed = s.rt().block_on(hotpatch_server::retention::prune(db, now, 90)).expect("prune");
        assert_eq!(removed, 1);
        assert_eq!(history_ids(db, s.rt()), ["edge", "new"]);
        // Kept for 30 days instead: the 89-day entry goes too; pruning again removes nothing.
        assert_eq!(s.rt().block_on(hotpatch_server::retention::prune(db, now, 30)).expect("prune"), 1);
        assert_eq!(s.rt().block_on(hotpatch_server::retention::prune(db, now, 30)).expect("prune"), 0);
        assert_eq!(history_ids(db, s.rt()), ["new"]);
    }
}

/// The server binary prunes at start with the retention given by --history-days,
/// and refuses a retention of 0 days.
#[test]
fn the_server_prunes_history_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("hotpatch.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let now = hotpatch_server::util::now();
    {
        let state = rt
            .block_on(hotpatch_server::open(&url, hotpatch_format::TrustStore::from_keys(Vec::new()), 1))
            .expect("open");
        for (id, days) in [("a-old", 40), ("b-new", 1)] {
            rt.block_on(sqlx::query(&history_row(id, "m", now - days * 86_400)).execute(&state.db.pool)).expect("seed");
        }
        rt.block_on(state.db.pool.close());
        rt.block_on(state.db.writer.close());
    }
    let data = dir.path().to_string_lossy().to_string();
    let (status, log) =
        common::server_process::run_to_exit(["--data", &data, "--listen", "127.0.0.1:0", "--history-days", "0"]);
    assert!(!status.success() && log.contains("--history-days"), "{log}");
    let server = common::server_process::ServerProcess::start([
        "--data",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--history-days",
        "30",
    ]);
    assert!(server.log_text().contains("history pruned"), "{}", server.log_text());
    let state =
        rt.block_on(hotpatch_server::open(&url, hotpatch_format::TrustStore::from_keys(Vec::new()), 1)).expect("open");
    assert_eq!(history_ids(&state.db, &rt), ["b-new"]);
}

/// A plain-text GET; returns the status and the body.
fn get_text(s: &TestServer, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(&format!("{}{path}", s.base));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => (r.status(), r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

#[test]
fn monitoring_endpoints_count_the_fleet_for_a_token() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let (_, pending) = s.enroll(&[], "pending-1");
        s.enroll(&[], "silent-1");
        let a = check_in(&s, &pending, "pending-1", 0);
        assert_eq!(a["entitled"], json!(true));
        assert_eq!(get_text(&s, "/metrics", None).0, 401);
        assert_eq!(get_text(&s, "/api/v1/monitoring/summary", Some("hpu_wrong")).0, 401);
        let (st, text) = get_text(&s, "/metrics", Some(&s.admin));
        assert_eq!(st, 200, "{text}");
        assert_eq!(metric(&text, "hotpatch_machines{state=\"all\"}"), Some(2.0), "{text}");
        assert_eq!(metric(&text, "hotpatch_machines{state=\"pending\"}"), Some(1.0), "{text}");
        assert_eq!(metric(&text, "hotpatch_machines{state=\"not-seen-24h\"}"), Some(1.0), "{text}");
        assert_eq!(metric(&text, "hotpatch_checkins_total{status=\"200\"}"), Some(1.0), "{text}");
        assert_eq!(
            metric(&text, "hotpatch_http_request_duration_seconds_count{group=\"checkin\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(metric(&text, "hotpatch_http_request_duration_seconds_count{group=\"api\"}").is_some_and(|n| n >= 3.0));
        let (st, line) = get_text(&s, "/api/v1/monitoring/summary", Some(&s.admin));
        assert_eq!(st, 200);
        assert!(
            line.starts_with("HOTPATCH WARNING - 2 machines: 0 failed, 0 halted deployments, 1 hotpatch pending"),
            "{line}"
        );
        // A failed apply halts the deployment: critical.
        let (_, d) = s.post(
            "/api/v1/deployments",
            &s.admin,
            json!({ "name": "d", "kind": "hotpatch", "patch_id": "fix-1", "rings": { "canary_percent": 100 } }),
        );
        let id = d["id"].as_str().unwrap_or_default();
        let url = format!("{}/api/v1/agent/checkin", s.base);
        let failed = checkin_body(
            "pending-1",
            2,
            &[(BUILD_A, "libdemo.so.1", 0)],
            json!([{ "deployment_id": id, "status": "failed", "detail": "busy" }]),
        );
        assert_eq!(call("POST", &url, Some(&pending), Some(&failed)).0, 200);
        let (_, line) = get_text(&s, "/api/v1/monitoring/summary", Some(&s.admin));
        assert!(line.starts_with("HOTPATCH CRITICAL - 2 machines: 1 failed, 1 halted deployments"), "{line}");
        assert!(line.trim_end().ends_with("silent=1") && line.lines().count() == 1, "{line}");
    }
}

/// Rings left to the server: below ten machines in scope everything goes at
/// once (no canary soak to wait for), and the deployment says so; from ten
/// machines on, 10% first and the rest an hour later; rings the operator
/// gives are kept as given.
#[test]
fn a_small_fleet_goes_at_once_and_says_so() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &["CVE-2027-0001"]));
        for n in 0..3 {
            s.enroll(&["web"], &format!("web-{n}"));
        }
        let create = |name: &str, extra: Value| {
            let mut body =
                json!({ "name": name, "kind": "hotpatch", "patch_id": "fix-1", "scope": { "tags": ["web"] } });
            if let Value::Object(m) = extra {
                body.as_object_mut().unwrap().extend(m);
            }
            let (st, d) = s.post("/api/v1/deployments", &s.admin, body);
            assert_eq!(st, 200, "{d}");
            d
        };
        let small = create("small", json!({}));
        assert_eq!((small["canary_percent"].clone(), small["soak_seconds"].clone()), (json!(100), json!(0)), "{small}");
        let note = small["rings_note"].as_str().unwrap_or_default().to_string();
        assert!(note.contains("small fleet: 3 machine(s) in scope"), "{small}");
        let shown = s.get(&format!("/api/v1/deployments/{}", small["id"].as_str().unwrap()), &s.admin).1;
        assert_eq!(shown["rings"]["note"], json!(note), "{shown}");

        let given = create("given", json!({ "rings": { "canary_percent": 50 } }));
        assert_eq!((given["canary_percent"].clone(), given["soak_seconds"].clone()), (json!(50), json!(3600)));
        assert!(given["rings_note"].is_null(), "{given}");

        for n in 3..10 {
            s.enroll(&["web"], &format!("web-{n}"));
        }
        let fleet = create("fleet", json!({}));
        assert_eq!((fleet["canary_percent"].clone(), fleet["soak_seconds"].clone()), (json!(10), json!(3600)));
        assert!(fleet["rings_note"].is_null(), "{fleet}");
    }
}
