//! Tiers, promotion, pins and a machine's tier driven from the web UI in a real
//! browser (headless Chromium over its DevTools pipe); the deployment page of a
//! window that ended mid-rollout; viewers and other origins change nothing.

mod common;

use common::*;
use hotpatch_format::Classification;
use serde_json::json;

fn audited(s: &TestServer, action: &str) -> bool {
    let (_, a) = s.get("/api/v1/audit", &s.admin);
    a["entries"].as_array().is_some_and(|e| e.iter().any(|x| x["action"] == action))
}

#[test]
fn tiers_are_set_promoted_through_and_pinned_from_the_ui() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let (machine, _) = s.enroll(&["db"], "db-1");
        let mut b = s.browser_as(&s.admin);
        b.goto(&format!("{}/ui/tiers", s.base));
        assert_eq!(b.status(), 200, "{}", b.html());
        b.fill("set-tiers", "tiers", "edge:0, stable:soon");
        b.press("set-tiers", "Save tiers");
        assert_eq!(b.status(), 400);
        assert!(b.text("error").contains("hours of tier \"stable\""), "{}", b.html());
        b.fill("set-tiers", "tiers", "edge:0, stable:24");
        b.press("set-tiers", "Save tiers");
        assert_eq!(b.status(), 200, "{}", b.html());
        let tiers = b.text("tiers");
        assert!(tiers.contains("edge") && tiers.contains("stable") && tiers.contains("24"), "{tiers}");

        b.press("promote-fix-1", "Promote to edge");
        assert_eq!(b.status(), 200, "{}", b.html());
        assert!(b.text("promotions").contains("edge"), "{}", b.html());
        assert!(b.has("promote-fix-1") && b.text("promote-fix-1").contains("Promote to stable"), "{}", b.html());
        assert!(audited(&s, "tiers.set") && audited(&s, "hotpatch.promote"));
        let (_, t) = s.get("/api/v1/tiers", &s.admin);
        assert_eq!(t["promotions"][0]["tier"], json!("edge"), "{t}");

        b.fill("add-pin", "tag", "db");
        b.fill("add-pin", "build_id", BUILD_A);
        b.fill("add-pin", "level", "-1");
        b.press("add-pin", "Pin");
        assert_eq!(b.status(), 400);
        assert!(b.text("error").contains("level -1 must be 0 or more"), "{}", b.html());
        b.fill("add-pin", "level", "0");
        b.press("add-pin", "Pin");
        assert_eq!(b.status(), 200, "{}", b.html());
        assert!(b.text("pins").contains("tag db"), "{}", b.html());
        let pin = s.get("/api/v1/pins", &s.admin).1["pins"][0]["id"].as_str().unwrap_or_default().to_string();
        b.press(&format!("unpin-{pin}"), "Unpin");
        assert!(!b.text("pins").contains("tag db"), "{}", b.html());
        assert!(audited(&s, "pin.create") && audited(&s, "pin.remove"));

        b.goto(&format!("{}/ui/machines/{machine}", s.base));
        assert!(b.text("tier").contains("stable"), "the default is the last tier: {}", b.html());
        b.fill("machine-tier", "tier", "edge");
        b.press("machine-tier", "Set tier");
        assert_eq!(b.status(), 200, "{}", b.html());
        assert!(b.text("tier").contains("edge"), "{}", b.html());
        assert_eq!(s.get(&format!("/api/v1/machines/{machine}"), &s.admin).1["tier"], json!("edge"));
    }
}

#[test]
fn viewers_and_other_origins_cannot_promote() {
    let s = TestServer::start(&Backend::Sqlite);
    s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
    let (machine, _) = s.enroll(&[], "m-1");
    assert_eq!(s.put("/api/v1/tiers", &s.admin, json!({ "tiers": [{ "name": "edge" }, { "name": "stable" }] })).0, 200);
    let viewer = s.user_token("vera", "viewer");
    let mut v = s.browser_as(&viewer);
    for page in ["/ui/tiers".to_string(), format!("/ui/machines/{machine}")] {
        v.goto(&format!("{}{page}", s.base));
        assert_eq!(v.status(), 200, "{page}");
        assert_eq!(v.eval("document.querySelectorAll('form[method=post]').length"), json!(0), "{page}: {}", v.html());
    }
    // The admin's own token, posted from another origin: refused, nothing promoted.
    let mut b = s.browser_as(&s.admin);
    b.goto(&format!("{}/ui/tiers", s.base));
    let token = b.eval("document.querySelector('#promote-fix-1 input[name=csrf]').value");
    let token = token.as_str().expect("csrf field").to_string();
    let attacker = foreign_site(format!(
        "<!DOCTYPE html><form id=\"evil\" method=\"post\" action=\"{}/ui/hotpatches/fix-1/promote\">\
         <input name=\"csrf\" value=\"{token}\"><button type=\"submit\">Go</button></form>",
        s.base
    ));
    b.goto(&attacker);
    b.press("evil", "Go");
    assert_eq!(b.status(), 403, "{}", b.html());
    assert_eq!(s.get("/api/v1/tiers", &s.admin).1["promotions"], json!([]));
}

#[test]
fn the_deployment_page_shows_what_a_closed_window_left() {
    let s = TestServer::start(&Backend::Sqlite);
    s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
    let start = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2)).strftime("%H:%M").to_string();
    let days = json!(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]);
    let (st, e) = s.post(
        "/api/v1/maintenance-windows",
        &s.admin,
        json!({ "name": "nightly", "days": days, "start": start, "duration_minutes": 60, "time_zone": "UTC" }),
    );
    assert_eq!(st, 200, "{e}");
    let begun = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(3)).to_string();
    let (_, d) = s.post(
        "/api/v1/deployments",
        &s.admin,
        json!({ "name": "fix-1", "kind": "hotpatch", "patch_id": "fix-1", "window": "nightly", "start_at": begun,
                "rings": { "canary_percent": 100 } }),
    );
    let id = d["id"].as_str().unwrap_or_default().to_string();
    let (_, late) = s.enroll(&[], "late-1");
    let (st, _) =
        s.post("/api/v1/agent/checkin", &late, checkin_body("late-1", 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([])));
    assert_eq!(st, 200);
    let mut b = s.browser_as(&s.admin);
    b.goto(&format!("{}/ui/deployments/{id}", s.base));
    let said = b.text("window-exceeded");
    assert!(
        said.contains("Window exceeded: maintenance window nightly ended at") && said.contains("1 machine not done"),
        "{said}"
    );
    let results = b.text("results");
    assert!(results.contains("late-1") && results.contains("window exceeded"), "{results}");
}
