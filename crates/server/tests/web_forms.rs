//! The web UI's forms driven in a real browser (headless Chromium over its
//! DevTools pipe) against the real server: each form acts, leaves an audit
//! entry, shows its errors on the form (a 4xx, never a 5xx), is refused
//! without the session's token or from another origin, and is not shown to
//! viewers.

mod common;

use common::browser::Browser;
use common::*;
use hotpatch_format::{Classification, SecretKey};
use serde_json::json;

/// The audit log's actions, newest first.
fn audit_actions(s: &TestServer) -> Vec<String> {
    let (st, a) = s.get("/api/v1/audit", &s.admin);
    assert_eq!(st, 200, "{a}");
    a["entries"]
        .as_array()
        .map(|e| e.iter().filter_map(|x| x["action"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn has_audit(s: &TestServer, action: &str) -> bool {
    audit_actions(s).iter().any(|a| a == action)
}

#[test]
fn enrollment_token_form_shows_the_token_once_and_it_enrolls() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        let mut b = s.browser_as(&s.admin);
        b.goto(&format!("{}/ui/machines", s.base));
        b.fill("enrollment-token", "tags", "prod, web");
        b.fill("enrollment-token", "hours", "2");
        b.press("enrollment-token", "Create enrollment token");
        assert_eq!(b.status(), 200);
        let token = b.text("enrollment-token");
        assert!(token.starts_with("hpe_"), "{}", b.html());
        let (id, _) = s.enroll_with(&token, "new-host").expect("the token enrolls");
        let (_, m) = s.get(&format!("/api/v1/machines/{id}"), &s.admin);
        assert_eq!(m["tags"], json!(["prod", "web"]));
        assert!(has_audit(&s, "enrollment-token.create"));

        // A bad value is shown on the form, with a 4xx.
        b.goto(&format!("{}/ui/machines", s.base));
        b.fill("enrollment-token", "hours", "9999");
        b.press("enrollment-token", "Create enrollment token");
        assert_eq!(b.status(), 400);
        assert!(b.text("error").contains("expires_in_seconds"), "{}", b.html());
        assert!(b.has("enrollment-token"), "the form is shown again");
    }
}

#[test]
fn upload_and_baseline_forms_fill_the_catalog() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("fix-1.hpatch");
        std::fs::write(&good, package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &["CVE-2027-7777"]))
            .expect("write");
        let stranger = dir.path().join("other.hpatch");
        let other_key = SecretKey::from_seed([42u8; 32]);
        std::fs::write(&stranger, package(&other_key, "fix-x", BUILD_A, 2, Classification::Security, &[]))
            .expect("write");

        let mut b = s.browser_as(&s.admin);
        b.goto(&format!("{}/ui/catalog", s.base));
        b.choose_file("upload-hotpatch", "package", &stranger);
        b.press("upload-hotpatch", "Upload");
        assert_eq!(b.status(), 422);
        assert!(b.text("error").contains("package rejected"), "{}", b.html());

        b.goto(&format!("{}/ui/catalog", s.base));
        b.choose_file("upload-hotpatch", "package", &good);
        b.press("upload-hotpatch", "Upload");
        assert_eq!(b.status(), 200);
        assert!(b.text("notice").contains("fix-1 uploaded"), "{}", b.html());
        assert!(b.text("hotpatches").contains("CVE-2027-7777"));
        assert!(has_audit(&s, "hotpatch.upload"));

        b.fill("register-baseline", "name", "2027.04");
        b.fill("register-baseline", "product", "demo");
        b.fill("register-baseline", "released", "2027-04-13");
        b.fill("register-baseline", "targets", "libdemo.so.1 not-hex");
        b.press("register-baseline", "Register baseline");
        assert_eq!(b.status(), 400);
        assert!(b.text("error").contains("build_id"), "{}", b.html());
        // The form comes back filled in: fix the one field and send again.
        b.fill("register-baseline", "targets", &format!("libdemo.so.1 {BUILD_B}"));
        b.press("register-baseline", "Register baseline");
        assert_eq!(b.status(), 200);
        assert!(b.text("baselines").contains("2027.04"), "{}", b.html());
        let (_, list) = s.get("/api/v1/baselines", &s.admin);
        assert_eq!(list["baselines"][0]["targets"][0]["build_id"], json!(BUILD_B));
        assert!(has_audit(&s, "baseline.create"));
    }
}

/// A check-in reporting BUILD_A at `level`, with `results`; returns the answer.
fn check_in(s: &TestServer, cred: &str, host: &str, level: u32, results: serde_json::Value) -> serde_json::Value {
    let (st, v) =
        s.post("/api/v1/agent/checkin", cred, checkin_body(host, 2, &[(BUILD_A, "libdemo.so.1", level)], results));
    assert_eq!(st, 200, "{v}");
    v
}

#[test]
fn a_deployment_made_paused_resumed_and_cancelled_from_the_ui() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let (_, web) = s.enroll(&["web"], "web-1");
        let (_, _db) = s.enroll(&["db"], "db-1");
        let mut b = s.browser_as(&s.admin);
        b.goto(&format!("{}/ui/catalog", s.base));
        let href = b.eval("document.querySelector('#hotpatches a[href*=\"deployments/new\"]').href");
        b.goto(href.as_str().expect("deploy link"));
        b.fill("new-deployment", "name", "roll-web");
        b.fill("new-deployment", "tags", "web");
        b.fill("new-deployment", "canary_percent", "100");
        b.fill("new-deployment", "soak_minutes", "0");
        b.fill("new-deployment", "failure_threshold_percent", "0");
        b.press("new-deployment", "Preview machines");
        assert!(b.text("preview").contains("reaches 1 machine(s) now: web-1"), "{}", b.html());
        b.press("new-deployment", "Create deployment");
        assert_eq!(b.status(), 200);
        assert!(b.text("state").contains("active"), "{}", b.html());
        assert!(has_audit(&s, "deployment.create"));
        let id = b.eval("location.pathname.split('/').pop()").as_str().unwrap_or_default().to_string();
        let work = check_in(&s, &web, "web-1", 0, json!([]));
        assert_eq!(work["hotpatches"][0]["deployment_id"], json!(id), "{work}");

        b.press("actions", "Pause");
        assert!(b.text("state").contains("paused") && b.text("why").contains("Paused"), "{}", b.html());
        assert_eq!(check_in(&s, &web, "web-1", 0, json!([]))["hotpatches"], json!([]), "paused: nothing offered");
        b.press("actions", "Resume");
        assert!(b.text("state").contains("active"), "{}", b.html());

        // The machine fails, the deployment halts; the page says why; resume offers it again.
        let failed = json!([{ "deployment_id": id, "status": "failed", "detail": "busy" }]);
        assert_eq!(check_in(&s, &web, "web-1", 0, failed)["hotpatches"], json!([]));
        b.goto(&format!("{}/ui/deployments/{id}", s.base));
        assert!(b.text("state").contains("halted"), "{}", b.html());
        assert!(b.text("why").contains("1 of 1 machines failed"), "{}", b.text("why"));
        assert!(b.text("results").contains("web-1") && b.text("results").contains("busy"));
        b.press("actions", "Resume");
        let again = check_in(&s, &web, "web-1", 0, json!([]));
        assert_eq!(again["hotpatches"][0]["deployment_id"], json!(id), "resume re-offers: {again}");
        assert!(has_audit(&s, "deployment.pause") && has_audit(&s, "deployment.resume"));

        b.press("actions", "Cancel");
        assert!(b.text("state").contains("cancelled"), "{}", b.html());
        assert!(!b.text("actions").contains("Resume"), "{}", b.html());
        assert!(has_audit(&s, "deployment.cancel"));

        // An error (a saved query and tags at once) comes back on the form, not as a 5xx.
        s.post("/api/v1/queries", &s.admin, json!({ "name": "webs", "query": "hostname:web-*" }));
        b.goto(href.as_str().expect("deploy link"));
        b.fill("new-deployment", "tags", "web");
        b.fill("new-deployment", "query", "webs");
        b.press("new-deployment", "Create deployment");
        assert_eq!(b.status(), 400);
        assert!(b.text("error").contains("not both"), "{}", b.html());
    }
}

#[test]
fn machines_are_tagged_and_revoked_and_keys_trusted_from_the_ui() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        let (id, cred) = s.enroll(&["old"], "m-1");
        let mut b = s.browser_as(&s.admin);
        b.goto(&format!("{}/ui/machines/{id}", s.base));
        b.fill("machine-tags", "tags", "prod, team:db");
        b.press("machine-tags", "Save tags");
        assert!(b.text("facts").contains("prod, team:db"), "{}", b.html());
        b.fill("machine-tags", "tags", "bad tag!");
        b.press("machine-tags", "Save tags");
        assert_eq!(b.status(), 400);
        assert!(b.text("error").contains("tag"), "{}", b.html());
        b.goto(&format!("{}/ui/machines/{id}", s.base));
        b.press("revoke", "Revoke this machine");
        assert!(b.text("error").contains("revoked"), "{}", b.html());
        let (st, _) = s.post("/api/v1/agent/checkin", &cred, checkin_body("m-1", 2, &[], json!([])));
        assert_eq!(st, 401, "a revoked machine is refused");
        assert!(has_audit(&s, "machine.tags") && has_audit(&s, "machine.revoke"));

        // A publisher key trusted in the UI works for the next upload, no restart; revoked, it no longer does.
        let publisher = SecretKey::from_seed([5u8; 32]);
        let signed = |patch: &str, level| package(&publisher, patch, BUILD_B, level, Classification::Security, &[]);
        assert_eq!(s.upload(&s.admin, &signed("p-1", 1)).0, 422, "not trusted yet");
        b.goto(&format!("{}/ui/keys", s.base));
        b.fill("add-key", "label", "release team");
        b.fill("add-key", "key", "not a key");
        b.press("add-key", "Trust key");
        assert_eq!(b.status(), 400);
        b.fill("add-key", "key", &publisher.public().to_text());
        b.press("add-key", "Trust key");
        let key_id = publisher.public().id_hex();
        assert!(b.text("keys").contains(&key_id) && b.text("keys").contains("release team"), "{}", b.html());
        assert_eq!(s.upload(&s.admin, &signed("p-1", 1)).0, 200, "trusted at once");
        b.press(&format!("revoke-{key_id}"), "Revoke");
        assert!(!b.text("keys").contains(&key_id), "{}", b.html());
        assert_eq!(s.upload(&s.admin, &signed("p-2", 2)).0, 422, "revoked at once");
        assert!(has_audit(&s, "trusted-key.add") && has_audit(&s, "trusted-key.revoke"));
    }
}

#[test]
fn viewers_see_no_forms_and_cannot_post() {
    let s = TestServer::start(&Backend::Sqlite);
    s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
    let (id, _) = s.enroll(&[], "m-1");
    let (_, d) =
        s.post("/api/v1/deployments", &s.admin, json!({ "name": "d", "kind": "hotpatch", "patch_id": "fix-1" }));
    let did = d["id"].as_str().unwrap_or_default().to_string();
    let viewer = s.user_token("vera", "viewer");
    let mut b = s.browser_as(&viewer);
    b.goto(&format!("{}/ui/deployments/new?patch=fix-1", s.base));
    assert_eq!(b.status(), 403, "{}", b.html());
    assert!(b.text("error").contains("operator"), "{}", b.html());
    for page in [
        "/ui/catalog",
        "/ui/machines",
        &format!("/ui/machines/{id}"),
        &format!("/ui/deployments/{did}"),
        "/ui/keys",
        "/ui/deployments",
    ] {
        b.goto(&format!("{}{page}", s.base));
        assert_eq!(b.status(), 200, "{page}");
        let forms = b.eval("document.querySelectorAll('form[method=post]').length");
        assert_eq!(forms, json!(0), "{page} shows a viewer a form: {}", b.html());
    }
    b.goto(&format!("{}/ui/machines", s.base));
    let token = b.eval("document.cookie").as_str().map(str::to_string);
    assert_eq!(token, Some(String::new()), "the session cookie is HttpOnly");
    // A post made by hand: first without a token, then with the session's own
    // (read through the DevTools): the token passes, the viewer's role does not.
    let post = |token: &str| {
        format!(
            "(() => {{ const f = document.createElement('form'); f.method = 'post'; \
             f.action = '/ui/deployments/{did}/cancel'; const i = document.createElement('input'); \
             i.name = 'csrf'; i.value = '{token}'; f.appendChild(i); document.body.appendChild(f); f.submit(); }})()"
        )
    };
    b.run_and_wait(&post(""));
    assert_eq!(b.status(), 403, "{}", b.html());
    assert!(b.text("error").contains("security token"), "{}", b.html());
    let session = b.cookie(&s.base, "hp_session").expect("session cookie");
    b.run_and_wait(&post(&hotpatch_server::web::csrf::token_for(&session)));
    assert!(b.text("error").contains("needs the operator role"), "{}", b.html());
    assert_eq!(b.status(), 403, "{}", b.html());
    let (_, after) = s.get(&format!("/api/v1/deployments/{did}"), &s.admin);
    assert_eq!(after["state"], json!("active"));
}

#[test]
fn forged_posts_are_refused() {
    let s = TestServer::start(&Backend::Sqlite);
    let mut b = s.browser_as(&s.admin);
    b.goto(&format!("{}/ui/machines", s.base));
    let token = b.eval("document.querySelector('#enrollment-token input[name=csrf]').value");
    let token = token.as_str().expect("csrf field").to_string();
    assert_eq!(token.len(), 64);

    // Same origin, but the token removed: refused, nothing made.
    b.eval("document.querySelector('#enrollment-token input[name=csrf]').remove()");
    b.press("enrollment-token", "Create enrollment token");
    assert_eq!(b.status(), 403, "{}", b.html());
    assert!(b.text("error").contains("security token"), "{}", b.html());
    assert!(!b.has("enrollment-token") || !b.text("enrollment-token").starts_with("hpe_"));

    // Another origin, even holding the right token (say it leaked): refused by origin.
    let attacker = foreign_site(format!(
        "<!DOCTYPE html><form id=\"evil\" method=\"post\" action=\"{}/ui/enrollment-tokens\">\
         <input name=\"csrf\" value=\"{token}\"><input name=\"tags\" value=\"evil\"><input name=\"hours\" value=\"24\">\
         <button type=\"submit\">Go</button></form>",
        s.base
    ));
    b.goto(&attacker);
    b.press("evil", "Go");
    assert_eq!(b.status(), 403, "{}", b.html());
    // The server-wide origin check answers before the form's own (JSON, 403).
    assert!(b.html().contains("cross-origin request refused"), "{}", b.html());
    assert!(!has_audit(&s, "enrollment-token.create"), "no token was made: {:?}", audit_actions(&s));

    // Signing a victim's browser in as the attacker (login CSRF) is refused too.
    let attacker_token = s.user_token("mallory", "viewer");
    let login = foreign_site(format!(
        "<!DOCTYPE html><form id=\"login\" method=\"post\" action=\"{}/ui/login\">\
         <input name=\"token\" value=\"{attacker_token}\"><button type=\"submit\">Go</button></form>",
        s.base
    ));
    let mut victim = Browser::start();
    victim.goto(&login);
    victim.press("login", "Go");
    assert_eq!(victim.status(), 403, "{}", victim.html());
    victim.goto(&format!("{}/ui/", s.base));
    assert!(victim.html().contains("<h1>Sign in</h1>"), "not signed in: {}", victim.html());
}

#[test]
fn windows_and_saved_queries_are_made_in_the_ui_and_offered_to_deployments() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let mut b = s.browser_as(&s.admin);
        b.goto(&format!("{}/ui/deployments", s.base));
        b.fill("new-window", "name", "tuesday-night");
        b.fill("new-window", "days", "tue");
        b.fill("new-window", "start", "22:00");
        b.fill("new-window", "minutes", "120");
        b.fill("new-window", "time_zone", "Mars/Olympus");
        b.press("new-window", "Create window");
        assert_eq!(b.status(), 400);
        assert!(b.text("error").contains("time_zone"), "{}", b.html());
        b.fill("new-window", "time_zone", "Europe/Berlin");
        b.press("new-window", "Create window");
        assert!(b.text("windows").contains("tuesday-night") && b.text("windows").contains("Europe/Berlin"));
        b.fill("new-query", "name", "webs");
        b.fill("new-query", "query", "hostname:web-* and");
        b.press("new-query", "Save query");
        assert_eq!(b.status(), 400);
        assert!(b.text("error").contains("query:"), "{}", b.html());
        b.fill("new-query", "query", "hostname:web-*");
        b.press("new-query", "Save query");
        assert!(b.text("queries").contains("hostname:web-*"), "{}", b.html());
        assert!(has_audit(&s, "window.create") && has_audit(&s, "query.create"), "{:?}", audit_actions(&s));

        b.goto(&format!("{}/ui/deployments/new?patch=fix-1", s.base));
        b.fill("new-deployment", "window", "tuesday-night");
        b.fill("new-deployment", "query", "webs");
        b.press("new-deployment", "Create deployment");
        assert_eq!(b.status(), 200, "{}", b.html());
        let summary = b.text("summary");
        assert!(summary.contains("query webs") && summary.contains("tuesday-night"), "{summary}");
    }
}
