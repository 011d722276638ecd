//! The overview and the machine list in a real browser, against a seeded fleet
//! whose machines are in several states at once: every count is checked, every
//! count's link leads to a list of exactly those machines, and the list filters,
//! sorts and pages. Also the deployment page's "why nothing is happening yet".

mod common;

use common::*;
use hotpatch_format::Classification;
use serde_json::{Value, json};

const BUILD_C: &str = "3333333333333333333333333333333333333333";
const BUILD_D: &str = "4444444444444444444444444444444444444444";
const BUILD_E: &str = "5555555555555555555555555555555555555555";

fn target(build: &str, file: &str, level: u32, error: Option<&str>) -> Value {
    json!({ "build_id": build, "file_name": file, "processes": 2, "applied_level": level,
            "applied_patch_id": if level > 0 { Some(format!("fix-{level}")) } else { None }, "error": error })
}

fn report(s: &TestServer, cred: &str, host: &str, targets: Vec<Value>) {
    let mut body = checkin_body(host, 2, &[], json!([]));
    body["targets"] = Value::Array(targets);
    let (st, v) = s.post("/api/v1/agent/checkin", cred, body);
    assert_eq!(st, 200, "{v}");
}

/// Eight machines: each state alone, one with three kinds of work at once, one never seen.
fn seed(s: &TestServer) {
    s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &["CVE-2027-1111"]));
    for (name, released, planned, build) in
        [("2020.01", "2020-01-14T00:00:00Z", true, BUILD_C), ("zd-1", "", false, BUILD_D)]
    {
        let released = if released.is_empty() {
            hotpatch_server::util::rfc3339(hotpatch_server::util::now() - 86_400)
        } else {
            released.to_string()
        };
        let (st, e) = s.post(
            "/api/v1/baselines",
            &s.admin,
            json!({ "name": name, "product": "old", "released": released, "planned": planned, "reason": "zero-day",
                    "targets": [{ "file_name": "libold.so.1", "build_id": build }] }),
        );
        assert_eq!(st, 200, "{e}");
    }
    let a0 = || target(BUILD_A, "libdemo.so.1", 0, None);
    let (_, c) = s.enroll(&["web"], "m-pending");
    report(s, &c, "m-pending", vec![a0()]);
    let (_, c) = s.enroll(&[], "m-restart");
    report(s, &c, "m-restart", vec![target(BUILD_C, "libold.so.1", 0, None)]);
    let (_, c) = s.enroll(&[], "m-failed");
    report(s, &c, "m-failed", vec![target(BUILD_E, "libx.so", 0, Some("cannot read /proc/1/maps"))]);
    let (_, c) = s.enroll(&["web"], "m-multi");
    let multi = vec![a0(), target(BUILD_C, "libold.so.1", 0, None), target(BUILD_D, "liby.so", 0, Some("denied"))];
    report(s, &c, "m-multi", multi);
    let (_, c) = s.enroll(&[], "m-uncovered");
    report(s, &c, "m-uncovered", vec![target(BUILD_E, "libunknown.so", 0, None)]);
    let (_, c) = s.enroll(&[], "m-ok");
    report(s, &c, "m-ok", vec![target(BUILD_A, "libdemo.so.1", 1, None)]);
    // A machine whose apply failed: failed, and no longer "pending" for that level.
    let (st, d) = s.post(
        "/api/v1/deployments",
        &s.admin,
        json!({ "name": "roll-1", "kind": "hotpatch", "patch_id": "fix-1",
                "rings": { "canary_percent": 100, "failure_threshold_percent": 100 } }),
    );
    assert_eq!(st, 200, "{d}");
    let (_, c) = s.enroll(&[], "m-applyfail");
    report(s, &c, "m-applyfail", vec![a0()]);
    let mut body = checkin_body(
        "m-applyfail",
        2,
        &[],
        json!([{ "deployment_id": d["id"], "status": "failed", "detail": "busy" }]),
    );
    body["targets"] = json!([a0()]);
    let (st, v) = s.post("/api/v1/agent/checkin", &c, body);
    assert_eq!(st, 200, "{v}");
    s.enroll(&[], "m-silent");
}

/// The hostnames of the machine list now shown, in order.
fn listed(b: &mut common::browser::Browser) -> Vec<String> {
    let v = b.eval("[...document.querySelectorAll('#machines tbody tr td:first-child a')].map(a => a.textContent)");
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn card(b: &mut common::browser::Browser, id: &str) -> (i64, String) {
    let n = b.eval(&format!("document.querySelector('#card-{id} .n').textContent"));
    let href = b.eval(&format!("document.querySelector('#card-{id} a').href"));
    (n.as_str().and_then(|n| n.parse().ok()).unwrap_or(-1), href.as_str().unwrap_or_default().to_string())
}

#[test]
fn the_overview_counts_every_kind_of_work_and_links_to_those_machines() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        seed(&s);
        let mut b = s.browser_as(&s.admin);
        let expected: [(&str, &[&str]); 9] = [
            (
                "machines",
                &["m-applyfail", "m-failed", "m-multi", "m-ok", "m-pending", "m-restart", "m-silent", "m-uncovered"],
            ),
            ("pending", &["m-multi", "m-pending"]),
            ("restart-required", &["m-multi", "m-restart"]),
            ("failed", &["m-applyfail", "m-failed", "m-multi"]),
            ("silent", &["m-silent"]),
            ("unknown", &["m-silent"]),
            ("not-covered", &["m-uncovered"]),
            ("hotpatched", &["m-ok"]),
            ("up-to-date", &["m-ok"]),
        ];
        for (id, hosts) in expected {
            b.goto(&format!("{}/ui/", s.base));
            let (n, href) = card(&mut b, id);
            assert_eq!(n, hosts.len() as i64, "card {id}: {}", b.html());
            b.goto(&href);
            assert_eq!(b.status(), 200);
            assert_eq!(listed(&mut b), hosts, "{id} links to {href}");
        }
        b.goto(&format!("{}/ui/", s.base));
        assert_eq!(card(&mut b, "unentitled").0, 0, "a trial is entitled");

        // Filters by tag, target, open CVE; sorted with the machines needing action first.
        for (query, hosts) in [
            ("tag=web", &["m-multi", "m-pending"][..]),
            ("target=libold.so.1", &["m-multi", "m-restart"]),
            ("cve=CVE-2027-1111", &["m-applyfail", "m-multi", "m-pending"]),
            ("tag=web&state=needs-restart", &["m-multi"]),
            ("tag=nosuch", &[]),
            ("tag=web&sort=state", &["m-multi", "m-pending"]),
            ("cve=CVE-2027-1111&state=pending&sort=state", &["m-multi", "m-pending"]),
        ] {
            b.goto(&format!("{}/ui/machines?{query}", s.base));
            assert_eq!(listed(&mut b), hosts, "{query}");
        }
        b.goto(&format!("{}/ui/machines?sort=state", s.base));
        let order = listed(&mut b);
        assert_eq!(order[..3], ["m-applyfail", "m-failed", "m-multi"], "failures first: {order:?}");
        assert_eq!(order.last().map(String::as_str), Some("m-uncovered"), "{order:?}");

        // The per-machine page lists every kind of work of a machine.
        b.goto(&format!("{}/ui/machines?tag=web&state=needs-restart", s.base));
        let href = b.eval("document.querySelector('#machines tbody a').href");
        b.goto(href.as_str().unwrap_or_default());
        let todo = b.text("todo");
        for word in ["check-failed", "needs-restart", "pending", "2 process(es)"] {
            assert!(todo.contains(word), "{word}: {todo}");
        }
        assert!(b.text("readiness").contains("ready: yes"), "{}", b.text("readiness"));
    }
}

#[test]
fn the_machine_list_pages_and_an_unentitled_fleet_is_counted() {
    let s = TestServer::start(&Backend::Sqlite);
    let (_, me) = s.get("/api/v1/whoami", &s.admin);
    let org = me["org_id"].as_str().expect("org").to_string();
    let values: Vec<String> =
        (0..150).map(|i| format!("('bulk{i:03}', '{org}', 'cred{i:03}', 'bulk-{i:03}', '[\"bulk\"]', 0)")).collect();
    s.sql(&format!(
        "INSERT INTO machines (id, org_id, credential_hash, hostname, tags, enrolled) VALUES {}",
        values.join(", ")
    ));
    let mut b = s.browser_as(&s.admin);
    b.goto(&format!("{}/ui/machines?tag=bulk", s.base));
    assert!(b.text("count").contains("150 machine(s)"), "{}", b.text("count"));
    let first = listed(&mut b);
    assert_eq!((first.len(), first[0].as_str(), first[99].as_str()), (100, "bulk-000", "bulk-099"));
    let next = b.eval("[...document.querySelectorAll('#pager a')].find(a => a.textContent === 'next page').href");
    b.goto(next.as_str().expect("a next page"));
    let second = listed(&mut b);
    assert_eq!((second.len(), second[0].as_str()), (50, "bulk-100"));
    assert!(!b.text("pager").contains("next page"));
    // Paging with a state filter (computed, not SQL): never seen means unknown.
    b.goto(&format!("{}/ui/machines?state=unknown&page=2", s.base));
    assert_eq!(listed(&mut b).len(), 50);

    // An organisation without subscription or trial: its machines count as unentitled.
    let other = s.create_org("lapsed", None);
    let (st, t) = s.post("/api/v1/enrollment-tokens", &other, json!({}));
    assert_eq!(st, 200, "{t}");
    s.enroll_with(t["token"].as_str().unwrap_or_default(), "lapsed-1").expect("enroll");
    let mut b = s.browser_as(&other);
    b.goto(&format!("{}/ui/", s.base));
    let (n, href) = card(&mut b, "unentitled");
    assert_eq!(n, 1);
    b.goto(&href);
    assert_eq!(listed(&mut b), ["lapsed-1"]);
}

#[test]
fn the_deployment_page_says_why_nothing_happens_yet() {
    let s = TestServer::start(&Backend::Sqlite);
    s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
    s.enroll(&[], "only-one");
    let mut b = s.browser_as(&s.admin);
    let make = |body: Value| {
        let (st, d) = s.post("/api/v1/deployments", &s.admin, body);
        assert_eq!(st, 200, "{d}");
        d["id"].as_str().unwrap_or_default().to_string()
    };
    let soak = make(json!({ "name": "soaking", "kind": "hotpatch", "patch_id": "fix-1",
                            "rings": { "canary_percent": 0, "soak_seconds": 7200 } }));
    b.goto(&format!("{}/ui/deployments/{soak}", s.base));
    let why = b.text("why");
    assert!(
        why.contains("canary ring is empty (0% of 1 machines") && why.contains("ring 2 (1 machines) starts at"),
        "{why}"
    );
    assert!(why.contains("after the canary's soak of 2 h"), "{why}");
    let later =
        make(json!({ "name": "later", "kind": "hotpatch", "patch_id": "fix-1", "start_at": "2099-01-01T14:00:00Z" }));
    b.goto(&format!("{}/ui/deployments/{later}", s.base));
    assert!(b.text("why").contains("Starts at 2099-01-01 14:00 UTC"), "{}", b.text("why"));
    let nobody =
        make(json!({ "name": "nobody", "kind": "hotpatch", "patch_id": "fix-1", "scope": { "tags": ["none"] } }));
    b.goto(&format!("{}/ui/deployments/{nobody}", s.base));
    assert!(b.text("why").contains("No machine is in this deployment's scope"), "{}", b.text("why"));
    // The list keeps the state and the reason in their own cells.
    b.goto(&format!("{}/ui/deployments", s.base));
    let cells = b.eval(
        "[...[...document.querySelectorAll('#deployments tbody tr')].find(r => r.cells[0].textContent === 'nobody').cells]\
         .map(t => t.textContent)",
    );
    let cells: Vec<String> = serde_json::from_value(cells).unwrap_or_default();
    assert_eq!(cells.get(7).map(String::as_str), Some("active"), "{cells:?}");
    assert!(cells.get(8).is_some_and(|c| c.starts_with("No machine is in")), "{cells:?}");
}
