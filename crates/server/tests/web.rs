//! The web UI rendered by a real browser: Debian's headless Chromium loads each
//! page from the real server on loopback and the test asserts on the DOM it built.

mod common;

use common::*;
use hotpatch_format::Classification;
use serde_json::json;

fn text_of(dom: &str, id: &str) -> String {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("element #{id} missing from DOM:\n{dom}"));
    let rest = &dom[start..];
    let end = rest.find("</table>").unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The overview card `id`: its link and count.
pub fn card_of(dom: &str, id: &str) -> String {
    let start = dom.find(&format!("id=\"card-{id}\"")).unwrap_or_else(|| panic!("card {id} missing:\n{dom}"));
    dom[start..].split("</a>").next().unwrap_or_default().to_string()
}

#[test]
fn web_ui_pages_render_the_fleet_in_a_browser() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &["CVE-2027-1234"]));
        let (st, d) = s.post("/api/v1/deployments", &s.admin, json!({ "name": "roll-fix-1", "kind": "hotpatch", "patch_id": "fix-1", "rings": { "canary_percent": 100 } }));
        assert_eq!(st, 200, "{d}");
        let id = d["id"].as_str().unwrap_or_default();
        let (_, c1) = s.enroll(&[], "web-1");
        let (_, c2) = s.enroll(&[], "<img src=x onerror=alert(1)>");
        let done = checkin_body(
            "web-1",
            4,
            &[(BUILD_A, "libdemo.so.1", 1)],
            json!([{ "deployment_id": id, "status": "applied", "detail": "ok" }]),
        );
        assert_eq!(s.post("/api/v1/agent/checkin", &c1, done).0, 200);
        let evil = checkin_body("<img src=x onerror=alert(1)>", 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([]));
        assert_eq!(s.post("/api/v1/agent/checkin", &c2, evil).0, 200);

        let overview = view(&s, "/ui/");
        assert!(overview.contains("<h1>Fleet overview</h1>"), "{overview}");
        for (id, n) in [("machines", 2), ("hotpatched", 1), ("pending", 1), ("failed", 0)] {
            let card = card_of(&overview, id);
            assert!(card.contains(&format!("<div class=\"n\">{n}</div>")), "{id} should be {n}: {card}");
        }

        let machines = view(&s, "/ui/machines");
        let table = text_of(&machines, "machines");
        assert!(table.contains(">web-1</a>") && table.contains("s-applied"), "{table}");
        // Hostile text is shown as text, never as markup.
        assert!(table.contains("&lt;img src=x onerror=alert(1)&gt;"), "{table}");
        assert!(!machines.contains("<img"), "{machines}");

        let compliance = view(&s, "/ui/compliance");
        let cves = text_of(&compliance, "cves");
        assert!(cves.contains("CVE-2027-1234") && cves.contains("s-fixed") && cves.contains("s-pending"), "{cves}");

        let (st, q) = s.post("/api/v1/queries", &s.admin, json!({ "name": "web-hosts", "query": "hostname:web-*" }));
        assert_eq!(st, 200, "{q}");
        let (st, d) = s.post(
            "/api/v1/deployments",
            &s.admin,
            json!({ "name": "by-query", "kind": "hotpatch", "patch_id": "fix-1", "scope": { "query": "web-hosts" } }),
        );
        assert_eq!(st, 200, "{d}");
        let deployments = view(&s, "/ui/deployments");
        let t = text_of(&deployments, "deployments");
        assert!(t.contains("roll-fix-1") && t.contains("1/2") && t.contains("s-active"), "{t}");
        assert!(t.contains("all machines") && t.contains("query web-hosts: <code>hostname:web-*</code>"), "{t}");
        assert!(text_of(&deployments, "queries").contains("web-hosts"), "{deployments}");

        let catalog = view(&s, "/ui/catalog");
        assert!(text_of(&catalog, "hotpatches").contains("CVE-2027-1234"), "{catalog}");
        let calendar = text_of(&catalog, "calendar");
        assert!(calendar.contains("planned baseline (restart)") && calendar.contains("hotpatch month"), "{calendar}");

        let billing = view(&s, "/ui/billing");
        assert!(text_of(&billing, "subscription").contains("1.50 USD"), "{billing}");
        assert!(billing.contains("id=\"invoice-total\""), "{billing}");
        assert!(text_of(&billing, "invoices").contains("open"), "{billing}");

        let audit = view(&s, "/ui/audit");
        let t = text_of(&audit, "audit");
        assert!(
            t.contains("hotpatch.upload") && t.contains("deployment.create") && t.contains("machine.enroll"),
            "{t}"
        );

        // No session: the browser lands on the sign-in form; a used link does not work twice.
        let anonymous = dump_dom(&format!("{}/ui/compliance", s.base));
        assert!(anonymous.contains("<h1>Sign in</h1>") && !anonymous.contains("CVE-2027-1234"), "{anonymous}");
        let (_, link) = s.post("/api/v1/ui-links", &s.admin, json!({}));
        let url = format!("{}{}", s.base, link["path"].as_str().unwrap_or_default());
        assert!(dump_dom(&url).contains("Fleet overview"));
        assert!(dump_dom(&url).contains("sign-in link unknown, used or expired"));
    }
}
