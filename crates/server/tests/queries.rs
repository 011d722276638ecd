//! Saved queries end to end on loopback, against SQLite and (when configured)
//! PostgreSQL: create, preview against enrolled machines with different facts,
//! deployments scoped by a query at check-in, errors, deletion rules, isolation.

mod common;

use common::*;
use hotpatch_format::Classification;
use serde_json::{Value, json};

/// A machine's check-in: its facts and the target files it runs, [(build_id, file_name)].
struct Host {
    hostname: &'static str,
    tags: &'static [&'static str],
    os: &'static str,
    kernel: &'static str,
    arch: &'static str,
    cores: u32,
    targets: &'static [(&'static str, &'static str)],
}

fn body(m: &Host, os: &str) -> Value {
    let targets: Vec<Value> = m
        .targets
        .iter()
        .map(|(b, f)| json!({ "build_id": b, "file_name": f, "processes": 1, "applied_level": 0 }))
        .collect();
    json!({
        "facts": { "hostname": m.hostname, "os": os, "kernel": m.kernel, "arch": m.arch, "cores": m.cores },
        "targets": targets,
        "results": [],
    })
}

fn check_in(s: &TestServer, cred: &str, body: &Value) -> Value {
    let (st, a) = s.post("/api/v1/agent/checkin", cred, body.clone());
    assert_eq!(st, 200, "{a}");
    a
}

fn offered(answer: &Value) -> Vec<String> {
    answer["hotpatches"]
        .as_array()
        .map(|v| v.iter().filter_map(|h| h["patch_id"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn hostnames(preview: &Value) -> Vec<String> {
    preview["machines"]
        .as_array()
        .map(|v| v.iter().filter_map(|m| m["hostname"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn error(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

const LIBSSL: &str = "3333333333333333333333333333333333333333";

const FLEET: &[Host] = &[
    Host {
        hostname: "web-1",
        tags: &["prod", "web"],
        os: "Debian GNU/Linux 12 (bookworm)",
        kernel: "6.1.0-18-amd64",
        arch: "x86_64",
        cores: 8,
        targets: &[(BUILD_A, "libdemo.so.1")],
    },
    Host {
        hostname: "web-2",
        tags: &["prod", "web"],
        os: "Ubuntu 22.04.4 LTS",
        kernel: "5.15.0-105-generic",
        arch: "x86_64",
        cores: 4,
        targets: &[(BUILD_A, "libdemo.so.1")],
    },
    Host {
        hostname: "db-1",
        tags: &["prod", "db"],
        os: "Debian GNU/Linux 12 (bookworm)",
        kernel: "6.1.0-18-amd64",
        arch: "x86_64",
        cores: 16,
        targets: &[(BUILD_A, "libdemo.so.1"), (LIBSSL, "libssl.so.3")],
    },
    Host {
        hostname: "dev-1",
        tags: &["dev"],
        os: "Debian GNU/Linux 12 (bookworm)",
        kernel: "6.1.0-18-arm64",
        arch: "aarch64",
        cores: 8,
        targets: &[(BUILD_A, "libdemo.so.1")],
    },
];

/// Enrolls and checks in the fleet (so the server knows the facts); returns each credential.
fn enroll_fleet(s: &TestServer) -> Vec<String> {
    FLEET
        .iter()
        .map(|m| {
            let (_, cred) = s.enroll(m.tags, m.hostname);
            check_in(s, &cred, &body(m, m.os));
            cred
        })
        .collect()
}

#[test]
fn saved_query_previews_its_machines_and_scopes_a_deployment_at_check_in() {
    for b in backends() {
        let s = TestServer::start(&b);
        let creds = enroll_fleet(&s);
        // Enrolled but never checked in: only its hostname and tags are known.
        s.enroll(&["prod"], "new-1");
        assert_eq!(s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[])).0, 200);

        let q = "tag:prod AND os:debian* and (hostname:web-* or cores>=16)";
        let (st, v) = s.post("/api/v1/queries", &s.admin, json!({ "name": "debian-prod", "query": q }));
        assert_eq!(st, 200, "{v}");
        assert_eq!((v["name"].as_str(), v["query"].as_str()), (Some("debian-prod"), Some(q)), "{v}");
        let (st, p) = s.get("/api/v1/queries/debian-prod", &s.admin);
        assert_eq!(st, 200, "{p}");
        assert_eq!(hostnames(&p), ["db-1", "web-1"], "{p}");
        assert_eq!(p["matched"], json!(2));
        assert_eq!(p["query"], json!(q));
        assert_eq!(p["canonical"], json!("tag:prod and os:debian* and (hostname:web-* or cores>=16)"));
        assert_eq!(p["machines"][1]["cores"], json!(8), "{p}");
        assert_eq!(p["machines"][1]["tags"], json!(["prod", "web"]), "{p}");

        // The other facts, one query each.
        for (name, query, want) in [
            ("ssl", "target:libssl.so.*", &["db-1"][..]),
            ("kernel-61", "kernel:6.1.*", &["db-1", "dev-1", "web-1"][..]),
            ("arm", "arch:aarch64", &["dev-1"][..]),
            ("small", "cores<8 or hostname:new-?", &["new-1", "web-2"][..]),
            ("not-prod", "not tag:prod", &["dev-1"][..]),
        ] {
            let (st, v) = s.post("/api/v1/queries", &s.admin, json!({ "name": name, "query": query }));
            assert_eq!(st, 200, "{v}");
            let (_, p) = s.get(&format!("/api/v1/queries/{name}"), &s.admin);
            assert_eq!(hostnames(&p), want, "{query}: {p}");
        }
        let (_, list) = s.get("/api/v1/queries", &s.admin);
        let names: Vec<&str> = list["queries"]
            .as_array()
            .map(|v| v.iter().filter_map(|q| q["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["arm", "debian-prod", "kernel-61", "not-prod", "small", "ssl"], "{list}");

        // A deployment scoped by the query reaches exactly the matching machines.
        let (st, d) = s.post(
            "/api/v1/deployments",
            &s.admin,
            json!({ "name": "fix-debian", "kind": "hotpatch", "patch_id": "fix-1", "scope": { "query": "debian-prod" },
                    "rings": { "canary_percent": 100 } }),
        );
        assert_eq!(st, 200, "{d}");
        let id = d["id"].as_str().unwrap_or_default().to_string();
        let got: Vec<bool> =
            FLEET.iter().zip(&creds).map(|(m, c)| offered(&check_in(&s, c, &body(m, m.os))) == ["fix-1"]).collect();
        assert_eq!(got, [true, false, true, false], "web-1 and db-1 only");
        let (_, dj) = s.get(&format!("/api/v1/deployments/{id}"), &s.admin);
        assert_eq!(dj["scope"]["query"], json!("debian-prod"), "{dj}");
        assert_eq!(dj["scope"]["query_text"], json!(q), "{dj}");
        assert_eq!(dj["rings"]["canary"]["machines"], json!(2), "{dj}");
        let (_, p) = s.get("/api/v1/queries/debian-prod", &s.admin);
        assert_eq!(p["deployments"][0]["name"], json!("fix-debian"), "{p}");

        // The scope is decided on the facts of each check-in: web-2 reinstalled on Debian is in.
        let a = check_in(&s, &creds[1], &body(&FLEET[1], "Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(offered(&a), ["fix-1"], "{a}");
        let (_, dj) = s.get(&format!("/api/v1/deployments/{id}"), &s.admin);
        assert_eq!(dj["rings"]["canary"]["machines"], json!(3), "{dj}");

        // A target-file query scopes too; tags scopes work as before.
        deploy_ok(&s, json!({ "name": "d-ssl", "kind": "hotpatch", "patch_id": "fix-1", "scope": { "query": "ssl" } }));
        let (_, all) = s.get("/api/v1/deployments", &s.admin);
        let ssl = all["deployments"]
            .as_array()
            .and_then(|v| v.iter().find(|d| d["name"] == "d-ssl"))
            .cloned()
            .unwrap_or_default();
        let ring = |r: &str| ssl["rings"][r]["machines"].as_i64().unwrap_or(-1);
        assert_eq!(ring("canary") + ring("rest"), 1, "{ssl}");
        deploy_ok(
            &s,
            json!({ "name": "d-dev", "kind": "hotpatch", "patch_id": "fix-1", "scope": { "tags": ["dev"] },
                              "rings": { "canary_percent": 100 } }),
        );
        assert_eq!(offered(&check_in(&s, &creds[3], &body(&FLEET[3], FLEET[3].os))), ["fix-1"]);

        let (_, a) = s.get("/api/v1/audit", &s.admin);
        let entry = a["entries"]
            .as_array()
            .and_then(|v| v.iter().find(|e| e["action"] == "query.create" && e["subject"] == "debian-prod"))
            .cloned()
            .unwrap_or_default();
        assert!(entry["detail"].to_string().contains("os:debian*"), "{a}");
        let (_, doc) = s.get("/openapi.json", "");
        assert!(doc["paths"]["/api/v1/queries/{name}"]["delete"].is_object(), "openapi documents saved queries");
    }
}

fn deploy_ok(s: &TestServer, body: Value) -> String {
    let (st, d) = s.post("/api/v1/deployments", &s.admin, body);
    assert_eq!(st, 200, "{d}");
    d["id"].as_str().unwrap_or_default().to_string()
}

#[test]
fn bad_queries_and_scopes_get_clear_errors_and_change_nothing() {
    for b in backends() {
        let s = TestServer::start(&b);
        let create =
            |name: &str, query: &str| s.post("/api/v1/queries", &s.admin, json!({ "name": name, "query": query }));
        let (st, e) = create("q", "tag:prod and (hostname:x or )");
        assert_eq!(st, 400, "{e}");
        assert_eq!(error(&e), "query: expected a field like tag: or hostname: at 28, found \")\"");
        let (st, e) = create("q", "tag:prod and prod");
        assert_eq!(st, 400, "{e}");
        assert!(error(&e).starts_with("query: unknown field \"prod\" at 13"), "{e}");
        let (st, e) = create("q", "cores>=lots");
        assert_eq!(st, 400, "{e}");
        assert!(error(&e).contains("expected a number after cores>= at 7"), "{e}");
        let (st, e) = create("q", "tag:a tag:b");
        assert!(st == 400 && error(&e).contains("expected 'and', 'or' or the end of the query at 6"), "{e}");
        let (st, e) = create("q", &format!("tag:{}", "x".repeat(2000)));
        assert!(st == 400 && error(&e).contains("at most 1024"), "{e}");
        let (st, e) = create("q", &format!("{}tag:a{}", "(".repeat(40), ")".repeat(40)));
        assert!(st == 400 && error(&e).contains("deeper than 32"), "{e}");
        let (st, e) = create("no spaces", "tag:a");
        assert!(st == 400 && error(&e).contains("query name"), "{e}");
        let (st, e) = s.post("/api/v1/queries", &s.admin, json!({ "name": "q", "query": "tag:a", "owner": "me" }));
        assert_eq!(st, 422, "{e}");

        assert_eq!(create("q", "tag:a").0, 200);
        let (st, e) = create("q", "tag:b");
        assert!(st == 409 && error(&e).contains("already exists"), "{e}");
        // Viewers read but do not change.
        s.post("/api/v1/users", &s.admin, json!({ "name": "vera", "role": "viewer" }));
        let (_, t) = s.post("/api/v1/tokens", &s.admin, json!({ "label": "v", "user": "vera" }));
        let viewer = t["token"].as_str().unwrap_or_default().to_string();
        let (st, e) = s.post("/api/v1/queries", &viewer, json!({ "name": "v", "query": "tag:a" }));
        assert!(st == 403 && error(&e).contains("operator"), "{e}");
        assert_eq!(s.get("/api/v1/queries/q", &viewer).0, 200);
        let (st, _, _) = call("DELETE", &format!("{}/api/v1/queries/q", s.base), Some(&viewer), None);
        assert_eq!(st, 403);
        assert_eq!(s.get("/api/v1/queries/nope", &s.admin).0, 404);

        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let deploy = |scope: Value| {
            s.post(
                "/api/v1/deployments",
                &s.admin,
                json!({ "name": "d", "kind": "hotpatch", "patch_id": "fix-1", "scope": scope }),
            )
        };
        let (st, e) = deploy(json!({ "tags": ["web"], "query": "q" }));
        assert!(st == 400 && error(&e).contains("either tags or query") && error(&e).contains("not both"), "{e}");
        let (st, e) = deploy(json!({ "tags": [], "query": "q" }));
        assert_eq!(st, 400, "{e}");
        let (st, e) = deploy(json!({ "query": "nope" }));
        assert!(st == 404 && error(&e).contains("no saved query \"nope\""), "{e}");
        let (st, e) = deploy(json!({ "query": "q", "owner": "me" }));
        assert_eq!(st, 422, "{e}");

        // Nothing but the one good query and no deployment came of it.
        let (_, list) = s.get("/api/v1/queries", &s.admin);
        assert_eq!(list["queries"].as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(s.get("/api/v1/deployments", &s.admin).1["deployments"], json!([]));
        let (_, a) = s.get("/api/v1/audit", &s.admin);
        let made = a["entries"].as_array().map(|v| v.iter().filter(|e| e["action"] == "query.create").count());
        assert_eq!(made, Some(1), "{a}");
    }
}

#[test]
fn a_query_in_use_is_not_deleted_until_its_deployments_are_cancelled() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (_, cred) = s.enroll(&["web"], "web-1");
        let web = body(&FLEET[0], FLEET[0].os);
        check_in(&s, &cred, &web);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        assert_eq!(s.post("/api/v1/queries", &s.admin, json!({ "name": "web", "query": "hostname:web-*" })).0, 200);
        let id = deploy_ok(
            &s,
            json!({ "name": "roll", "kind": "hotpatch", "patch_id": "fix-1", "scope": { "query": "web" }, "rings": { "canary_percent": 100 } }),
        );
        assert_eq!(offered(&check_in(&s, &cred, &web)), ["fix-1"]);
        let url = format!("{}/api/v1/queries/web", s.base);
        let (st, e, _) = call("DELETE", &url, Some(&s.admin), None);
        assert_eq!(st, 409, "{e}");
        assert!(error(&e).contains("(roll)") && error(&e).contains("cancel them first"), "{e}");
        // A halted deployment can be resumed, so it holds the query too.
        s.sql("UPDATE deployments SET state = 'halted'");
        assert_eq!(call("DELETE", &url, Some(&s.admin), None).0, 409);
        assert_eq!(s.post(&format!("/api/v1/deployments/{id}/cancel"), &s.admin, json!({})).0, 200);
        let (st, v, _) = call("DELETE", &url, Some(&s.admin), None);
        assert_eq!((st, v["deleted"].as_str()), (200, Some("web")), "{v}");
        assert_eq!(s.get("/api/v1/queries/web", &s.admin).0, 404);
        assert_eq!(call("DELETE", &url, Some(&s.admin), None).0, 404);
        // The cancelled deployment keeps pointing at the deleted query: it reaches nobody,
        // even when a new query takes the same name.
        assert_eq!(s.post("/api/v1/queries", &s.admin, json!({ "name": "web", "query": "tag:*" })).0, 200);
        let (_, d) = s.get(&format!("/api/v1/deployments/{id}"), &s.admin);
        assert_eq!(
            (d["scope"]["query"].clone(), d["rings"]["canary"]["machines"].clone()),
            (json!(null), json!(0)),
            "{d}"
        );
        let (_, a) = s.get("/api/v1/audit", &s.admin);
        assert!(
            a["entries"]
                .as_array()
                .is_some_and(|v| v.iter().any(|e| e["action"] == "query.delete" && e["subject"] == "web")),
            "{a}"
        );
    }
}

#[test]
fn organisations_cannot_see_or_use_each_others_queries() {
    for b in backends() {
        let s = TestServer::start(&b);
        let globex = s.create_org("globex", Some(30));
        s.enroll(&["prod"], "acme-1");
        assert_eq!(s.post("/api/v1/queries", &s.admin, json!({ "name": "prod", "query": "tag:prod" })).0, 200);
        assert_eq!(s.get("/api/v1/queries", &globex).1["queries"], json!([]));
        let (st, e) = s.get("/api/v1/queries/prod", &globex);
        assert_eq!(st, 404, "{e}");
        assert_eq!(call("DELETE", &format!("{}/api/v1/queries/prod", s.base), Some(&globex), None).0, 404);
        s.upload(&globex, &package(&s.key, "g-fix", BUILD_A, 1, Classification::Security, &[]));
        let (st, e) = s.post(
            "/api/v1/deployments",
            &globex,
            json!({ "name": "steal", "kind": "hotpatch", "patch_id": "g-fix", "scope": { "query": "prod" } }),
        );
        assert_eq!(st, 404, "{e}");
        // Names are per organisation; a query sees only its own organisation's machines.
        let (st, v) = s.post("/api/v1/queries", &globex, json!({ "name": "prod", "query": "tag:prod" }));
        assert_eq!(st, 200, "{v}");
        let (_, t) = s.post("/api/v1/enrollment-tokens", &globex, json!({ "tags": ["prod"] }));
        s.enroll_with(t["token"].as_str().unwrap_or_default(), "globex-1").expect("enroll in globex");
        assert_eq!(hostnames(&s.get("/api/v1/queries/prod", &globex).1), ["globex-1"]);
        assert_eq!(hostnames(&s.get("/api/v1/queries/prod", &s.admin).1), ["acme-1"]);
        assert!(
            s.get("/api/v1/audit", &globex).1["entries"].as_array().is_some_and(|v| v
                .iter()
                .filter(|e| e["action"] == "query.create")
                .count()
                == 1)
        );
    }
}

#[test]
fn schema_3_upgrades_a_database_that_already_has_deployments() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        deploy_ok(
            &s,
            json!({ "name": "old", "kind": "hotpatch", "patch_id": "fix-1", "scope": { "tags": ["web"] }, "rings": { "canary_percent": 100 } }),
        );
        // Back to schema 1, as a server from before saved queries left the database.
        s.sql("DROP INDEX deployments_scope_query");
        s.sql("ALTER TABLE deployments DROP COLUMN scope_query_id");
        s.sql("DROP TABLE saved_queries");
        s.sql("DELETE FROM schema_migrations WHERE version = 3");
        // A server starting on it applies migration 3; the old deployment keeps its tags scope.
        let r = s.replica();
        let (_, cred) = r.enroll(&["web"], "web-1");
        assert_eq!(offered(&check_in(&r, &cred, &body(&FLEET[0], FLEET[0].os))), ["fix-1"]);
        let (_, d) = r.get("/api/v1/deployments", &r.admin);
        assert_eq!(d["deployments"][0]["scope"], json!({ "tags": ["web"] }), "{d}");
        assert_eq!(r.post("/api/v1/queries", &r.admin, json!({ "name": "web", "query": "tag:web" })).0, 200);
        deploy_ok(&r, json!({ "name": "new", "kind": "hotpatch", "patch_id": "fix-1", "scope": { "query": "web" } }));
    }
}
