//! The stored kinds of work (`work_flags`) against the judge: a fleet with
//! machines in several states (several per machine) is seeded through real
//! check-ins; every state filter of the machine list and every count of the
//! overview must name exactly the machines that the compliance rows (the judge,
//! computed from scratch) put in that state. Then a check-in, a catalog upload,
//! a deployment's resume and a lapsed subscription change the states, and the
//! comparison runs again after each. SQLite and PostgreSQL.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use hotpatch_format::Classification;
use serde_json::{Value, json};

const BUILD_C: &str = "3333333333333333333333333333333333333333";
const BUILD_D: &str = "4444444444444444444444444444444444444444";
const BUILD_E: &str = "5555555555555555555555555555555555555555";

/// The list's state filters, each with the overview card that counts it.
const STATES: [(&str, &str); 8] = [
    ("pending", "pending"),
    ("needs-restart", "restart-required"),
    ("failed", "failed"),
    ("not-covered", "not-covered"),
    ("unknown", "unknown"),
    ("hotpatched", "hotpatched"),
    ("up-to-date", "up-to-date"),
    ("unentitled", "unentitled"),
];

fn target(build: &str, file: &str, level: u32, error: Option<&str>) -> Value {
    json!({ "build_id": build, "file_name": file, "processes": 1, "applied_level": level,
            "applied_patch_id": if level > 0 { Some(format!("fix-{level}")) } else { None }, "error": error })
}

fn report(s: &TestServer, cred: &str, host: &str, targets: Vec<Value>, results: Value) {
    let mut body = checkin_body(host, 2, &[], results);
    body["targets"] = Value::Array(targets);
    let (st, v) = s.post("/api/v1/agent/checkin", cred, body);
    assert_eq!(st, 200, "{v}");
}

/// The machines with their credentials, by hostname.
type Fleet = BTreeMap<&'static str, String>;

fn seed(s: &TestServer) -> (Fleet, String) {
    s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &["CVE-2027-1111"]));
    let yesterday = hotpatch_server::util::rfc3339(hotpatch_server::util::now() - 86_400);
    // The demo library's build in a registered baseline: the release model (which
    // asks for entitlement) judges it, where a build in none is judged by the catalog alone.
    for (name, product, released, planned, file, build) in [
        ("demo-1", "demo", "2020-01-14T00:00:00Z", true, "libdemo.so.1", BUILD_A),
        ("2020.01", "old", "2020-01-14T00:00:00Z", true, "libold.so.1", BUILD_C),
        ("zd-1", "old", yesterday.as_str(), false, "libold.so.1", BUILD_D),
    ] {
        let (st, e) = s.post(
            "/api/v1/baselines",
            &s.admin,
            json!({ "name": name, "product": product, "released": released, "planned": planned, "reason": "zero-day",
                    "targets": [{ "file_name": file, "build_id": build }] }),
        );
        assert_eq!(st, 200, "{e}");
    }
    let a = |level| target(BUILD_A, "libdemo.so.1", level, None);
    let mut fleet = Fleet::new();
    let reports: [(&'static str, Vec<Value>); 8] = [
        ("m-pending", vec![a(0)]),
        ("m-restart", vec![target(BUILD_C, "libold.so.1", 0, None)]),
        ("m-failed", vec![target(BUILD_E, "libx.so", 0, Some("cannot read /proc/1/maps"))]),
        ("m-multi", vec![a(0), target(BUILD_C, "libold.so.1", 0, None), target(BUILD_D, "liby.so", 1, Some("denied"))]),
        ("m-uncovered", vec![target(BUILD_E, "libunknown.so", 0, None)]),
        ("m-ok", vec![a(1), target(BUILD_E, "libunknown.so", 0, None)]),
        ("m-fine", vec![a(1)]),
        ("m-applyfail", vec![a(0)]),
    ];
    for (host, targets) in reports {
        let (_, cred) = s.enroll(&[], host);
        report(s, &cred, host, targets, json!([]));
        fleet.insert(host, cred);
    }
    let (st, d) = s.post(
        "/api/v1/deployments",
        &s.admin,
        json!({ "name": "roll-1", "kind": "hotpatch", "patch_id": "fix-1",
                "rings": { "canary_percent": 100, "failure_threshold_percent": 100 } }),
    );
    assert_eq!(st, 200, "{d}");
    let id = d["id"].as_str().expect("deployment id").to_string();
    report(s, &fleet["m-applyfail"], "m-applyfail", vec![a(0)], json!([{ "deployment_id": id, "status": "failed" }]));
    s.enroll(&[], "m-silent");
    (fleet, id)
}

/// What the judge says: each state's machines, from the compliance rows.
fn judged(s: &TestServer, entitled: bool) -> BTreeMap<&'static str, BTreeSet<String>> {
    let (st, v) = s.get("/api/v1/compliance/machines", &s.admin);
    assert_eq!(st, 200, "{v}");
    let mut kinds: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for r in v["rows"].as_array().expect("rows") {
        let host = r["hostname"].as_str().unwrap_or_default().to_string();
        let k = kinds.entry(host).or_default();
        match r["status"].as_str().unwrap_or_default() {
            "pending" => k.insert("pending"),
            "needs-restart" => k.insert("needs-restart"),
            "apply-failed" | "check-failed" => k.insert("failed"),
            "not-covered" => k.insert("not-covered"),
            "unknown" => k.insert("unknown"),
            _ => false,
        };
        if r["applied_level"].as_i64().unwrap_or(0) > 0 {
            k.insert("hotpatched");
        }
    }
    let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for (host, k) in kinds {
        let worry = ["pending", "needs-restart", "failed", "not-covered", "unknown"];
        let mut k = k.clone();
        if !worry.iter().any(|w| k.contains(w)) {
            k.insert("up-to-date");
        }
        if !entitled {
            k.insert("unentitled");
        }
        for state in k {
            out.entry(state).or_default().insert(host.clone());
        }
    }
    out
}

/// A client signed in to the web UI (the one-time link's cookie).
struct Ui {
    agent: ureq::Agent,
    base: String,
    cookie: String,
}

impl Ui {
    fn sign_in(s: &TestServer) -> Ui {
        let (st, link) = s.post("/api/v1/ui-links", &s.admin, json!({}));
        assert_eq!(st, 200, "{link}");
        let agent = ureq::AgentBuilder::new().redirects(0).build();
        let r = agent.get(&format!("{}{}", s.base, link["path"].as_str().unwrap_or_default())).call().expect("link");
        let cookie = r.header("set-cookie").and_then(|c| c.split(';').next()).expect("session cookie").to_string();
        Ui { agent, base: s.base.clone(), cookie }
    }

    fn page(&self, path: &str) -> String {
        let r = self.agent.get(&format!("{}{path}", self.base)).set("Cookie", &self.cookie).call().expect(path);
        r.into_string().expect("page text")
    }

    /// The hostnames the machine list shows for `query`, in order.
    fn listed(&self, query: &str) -> Vec<String> {
        let html = self.page(&format!("/ui/machines?{query}"));
        html.split("href=\"/ui/machines/")
            .skip(1)
            .filter_map(|rest| rest.split_once("\">").and_then(|(_, after)| after.split_once("</a>")))
            .map(|(host, _)| host.to_string())
            .collect()
    }

    /// The number on an overview card.
    fn card(&self, html: &str, id: &str) -> i64 {
        let after = html.split(&format!("id=\"card-{id}\"")).nth(1).expect(id);
        let n = after.split("class=\"n\">").nth(1).and_then(|x| x.split('<').next()).expect(id);
        n.parse().expect(id)
    }
}

/// Every state filter and overview count equals the judge's; "needs action
/// first" puts the failures first.
fn check(s: &TestServer, ui: &Ui, entitled: bool, when: &str) {
    let expected = judged(s, entitled);
    let overview = ui.page("/ui/");
    for (state, card) in STATES {
        let want: Vec<String> = expected.get(state).map(|h| h.iter().cloned().collect()).unwrap_or_default();
        assert_eq!(ui.listed(&format!("state={state}")), want, "{when}: state={state}");
        assert_eq!(ui.card(&overview, card), want.len() as i64, "{when}: card {card}");
    }
    let order = ui.listed("sort=state");
    let failed = expected.get("failed").map_or(0, BTreeSet::len);
    let first: BTreeSet<String> = order[..failed].iter().cloned().collect();
    assert_eq!(Some(&first), expected.get("failed").or(Some(&BTreeSet::new())), "{when}: {order:?}");
}

#[test]
fn stored_kinds_of_work_follow_check_ins_catalog_deployments_and_entitlement() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        let (fleet, deployment) = seed(&s);
        let ui = Ui::sign_in(&s);
        check(&s, &ui, true, "seeded");
        let sets: Vec<usize> = STATES.iter().map(|(st, _)| judged(&s, true).get(st).map_or(0, BTreeSet::len)).collect();
        assert_eq!(sets, [2, 2, 3, 2, 1, 3, 1, 0], "the seed covers every kind of work but the two it cannot");

        // One machine's check-in: the uncovered build is gone, the demo library pending.
        let a0 = target(BUILD_A, "libdemo.so.1", 0, None);
        report(&s, &fleet["m-uncovered"], "m-uncovered", vec![a0], json!([]));
        check(&s, &ui, true, "after a check-in");

        // The catalog: level 2 of the demo library makes m-fine pending again.
        s.upload(&s.admin, &package(&s.key, "fix-2", BUILD_A, 2, Classification::Security, &["CVE-2027-2222"]));
        assert!(judged(&s, true)["pending"].contains("m-fine"));
        check(&s, &ui, true, "after an upload");

        // Resuming re-offers the deployment to the machine that failed: no longer failed.
        for action in ["pause", "resume"] {
            let (st, v) = s.post(&format!("/api/v1/deployments/{deployment}/{action}"), &s.admin, json!({}));
            assert!(st == 200 || (action == "pause" && st == 409), "{action}: {v}");
        }
        assert!(!judged(&s, true)["failed"].contains("m-applyfail"));
        check(&s, &ui, true, "after a resume");

        // Entitlement ends with the clock, no event: hotpatches are no longer pending.
        s.sql("UPDATE subscriptions SET active_until = 1, trial_until = 1");
        assert!(!judged(&s, false).contains_key("pending"));
        check(&s, &ui, false, "after the subscription lapsed");
    }
}
