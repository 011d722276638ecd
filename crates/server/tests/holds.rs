//! Holds shown: a pending hotpatch held back by the machine's tier (not yet
//! promoted there, or the tier's "deploy after" delay) or by a pin says so on
//! the compliance API and the machine page; an enrollment token names the tier
//! its machine joins (an unknown tier is refused, the choice is audited).

mod common;

use common::*;
use hotpatch_format::Classification;
use serde_json::{Value, json};

/// Each machine's hold on the demo library, by hostname, from the compliance API.
fn holds(s: &TestServer) -> Vec<(String, Value)> {
    let (st, v) = s.get("/api/v1/compliance/machines", &s.admin);
    assert_eq!(st, 200, "{v}");
    let mut out: Vec<(String, Value)> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["build_id"] == BUILD_A)
        .map(|r| (r["hostname"].as_str().unwrap_or_default().to_string(), r["hold"].clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn hold_of(s: &TestServer, host: &str) -> String {
    holds(s).into_iter().find(|(h, _)| h == host).map(|(_, v)| v.as_str().unwrap_or("").to_string()).expect(host)
}

fn machine_page(s: &TestServer, id: &str) -> String {
    let (st, link) = s.post("/api/v1/ui-links", &s.admin, json!({}));
    assert_eq!(st, 200, "{link}");
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = agent.get(&format!("{}{}", s.base, link["path"].as_str().unwrap_or_default())).call().expect("link");
    let cookie = r.header("set-cookie").and_then(|c| c.split(';').next()).expect("cookie").to_string();
    let page = agent.get(&format!("{}/ui/machines/{id}", s.base)).set("Cookie", &cookie).call().expect("page");
    page.into_string().expect("text")
}

#[test]
fn tier_and_pin_holds_are_said_and_tokens_put_machines_in_a_tier() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        let tiers = json!({ "tiers": [{ "name": "edge" }, { "name": "stable", "deploy_after_hours": 24 }] });
        assert_eq!(s.put("/api/v1/tiers", &s.admin, tiers).0, 200);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));

        let (st, v) = s.post("/api/v1/enrollment-tokens", &s.admin, json!({ "tier": "nosuch" }));
        assert_eq!(st, 400, "{v}");
        assert!(v.to_string().contains("tier \\\"nosuch\\\""), "{v}");
        let (st, t) = s.post("/api/v1/enrollment-tokens", &s.admin, json!({ "tier": "edge" }));
        assert_eq!(st, 200, "{t}");
        let (edge, edge_cred) = s.enroll_with(t["token"].as_str().unwrap_or_default(), "m-edge").expect("enroll");
        assert_eq!(s.get(&format!("/api/v1/machines/{edge}"), &s.admin).1["tier"], json!("edge"));
        let (_, audit) = s.get("/api/v1/audit", &s.admin);
        let entries = audit["entries"].as_array().expect("entries");
        assert!(entries.iter().any(|e| e["action"] == "enrollment-token.create" && e.to_string().contains("edge")));
        let (stable, stable_cred) = s.enroll(&[], "m-stable");
        let (_, db_cred) = s.enroll(&["db"], "m-db");
        for (cred, host) in [(&edge_cred, "m-edge"), (&stable_cred, "m-stable"), (&db_cred, "m-db")] {
            let body = checkin_body(host, 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([]));
            assert_eq!(s.post("/api/v1/agent/checkin", cred, body).0, 200);
        }

        assert!(hold_of(&s, "m-edge").contains("not yet promoted to tier edge"), "{:?}", holds(&s));
        let promote = |tier: &str| {
            let (st, v) = s.post("/api/v1/hotpatches/fix-1/promote", &s.admin, json!({ "tier": tier }));
            assert_eq!(st, 200, "{v}");
        };
        promote("edge");
        assert_eq!(hold_of(&s, "m-edge"), "", "edge deploys at once");
        assert!(hold_of(&s, "m-stable").contains("not yet promoted to tier stable"), "{:?}", holds(&s));
        promote("stable");
        let held = hold_of(&s, "m-stable");
        assert!(held.contains("tier stable deploys it after 24 h, at 20"), "{held}");

        let pin = json!({ "tag": "db", "build_id": BUILD_A, "level": 0 });
        assert_eq!(s.post("/api/v1/pins", &s.admin, pin).0, 200);
        assert!(hold_of(&s, "m-db").contains("held at level 0 by the pin on tag db"), "{:?}", holds(&s));

        let page = machine_page(&s, &stable);
        assert!(page.contains("held: fix-1: tier stable deploys it after 24 h"), "{page}");
        assert!(!machine_page(&s, &edge).contains("held:"), "nothing holds the edge machine");
    }
}
