//! The publisher's signed documents at the server's edge: sizes, key rotation
//! and one catalog per publisher. Real server on loopback, real database,
//! real signatures.

mod common;

use common::*;
use hotpatch_format::{CatalogEntry, CatalogMetadata, MAX_DOCUMENT_LEN, MAX_SIGNED_LEN, SecretKey};
use serde_json::Value;

fn metadata(version: u64, targets: Vec<CatalogEntry>) -> CatalogMetadata {
    let now = jiff::Timestamp::now();
    CatalogMetadata {
        version,
        issued: now.to_string(),
        expires: (now + jiff::SignedDuration::from_hours(24)).to_string(),
        targets,
        revoked: vec![],
        revoked_keys: vec![],
    }
}

fn entry(i: usize) -> CatalogEntry {
    CatalogEntry {
        build_id: format!("{i:040x}"),
        file_name: format!("lib{}.so.{i}", "x".repeat(200)),
        patch_id: format!("fix-{i}"),
        level: 1,
        sha256: "ab".repeat(32),
    }
}

/// Metadata whose signed text is just under the format's limit.
fn largest_metadata(key: &SecretKey, version: u64) -> Value {
    let mut targets = Vec::new();
    let mut len = 1024;
    loop {
        let next = entry(targets.len());
        len += serde_json::to_string(&next).expect("json").len() + 1;
        if len > MAX_SIGNED_LEN {
            break;
        }
        targets.push(next);
    }
    let doc = metadata(version, targets).sign(key).expect("sign");
    assert!(doc.signed.len() <= MAX_SIGNED_LEN && doc.signed.len() > MAX_SIGNED_LEN - 2048, "{}", doc.signed.len());
    serde_json::to_value(doc).expect("json")
}

fn put_raw(s: &TestServer, bytes: Vec<u8>) -> (u16, String) {
    let r = ureq::put(&format!("{}/api/v1/catalog/metadata", s.base))
        .set("Authorization", &format!("Bearer {}", s.admin))
        .set("Content-Type", "application/json")
        .send_bytes(&bytes);
    match r {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("put metadata: {e}"),
    }
}

#[test]
fn metadata_up_to_the_format_limit_is_accepted_and_a_larger_body_is_a_clear_413() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        let body = serde_json::to_vec(&largest_metadata(&s.key, 3)).expect("json");
        assert!(body.len() > hotpatch_server::api::JSON_BODY_LIMIT, "the document must exceed the JSON limit");
        let (st, text) = put_raw(&s, body);
        assert_eq!(st, 200, "{text}");
        let (st, got) = s.get("/api/v1/catalog/metadata", &s.admin);
        assert_eq!(st, 200);
        assert!(got["signed"].as_str().is_some_and(|t| t.len() > MAX_SIGNED_LEN / 2), "stored whole");

        let (st, text) = put_raw(&s, vec![b' '; MAX_DOCUMENT_LEN + 1]);
        assert_eq!(st, 413, "{text}");
        assert!(text.contains(&format!("at most {MAX_DOCUMENT_LEN} bytes")), "{text}");
    }
}

fn keys_document(anchor: &SecretKey, version: u64, keys: &[&SecretKey], signer: &SecretKey) -> Value {
    let m = hotpatch_format::KeysMetadata {
        publisher: anchor.public().id_hex(),
        version,
        issued: jiff::Timestamp::now().to_string(),
        keys: keys.iter().map(|k| k.public().to_text().trim().to_string()).collect(),
    };
    serde_json::to_value(m.sign(signer).expect("sign")).expect("json")
}

fn signed(key: &SecretKey, version: u64, hours: i64) -> Value {
    let now = jiff::Timestamp::now();
    let mut m = metadata(version, vec![entry(1)]);
    m.expires = (now + jiff::SignedDuration::from_hours(hours)).to_string();
    serde_json::to_value(m.sign(key).expect("sign")).expect("json")
}

/// An enrolled agent state directory, on loopback.
fn enrolled(s: &TestServer, dir: &std::path::Path) -> std::path::PathBuf {
    let (st, t) = s.post("/api/v1/enrollment-tokens", &s.admin, serde_json::json!({ "tags": ["trust"] }));
    assert_eq!(st, 200, "{t}");
    let state_dir = dir.join("agent-state");
    hotpatch_agent::enroll(&s.base, t["token"].as_str().unwrap_or_default(), &state_dir, None).expect("enroll");
    state_dir
}

#[test]
fn a_publisher_rotates_its_key_through_metadata_and_the_retired_key_signs_nothing_after() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = enrolled(&s, dir.path());
        let (old, new, newer) = (test_key(), SecretKey::from_seed([20; 32]), SecretKey::from_seed([21; 32]));
        let anchors = hotpatch_format::TrustStore::from_keys([old.public()]);

        // The server follows the rotation: the old key signs no metadata, the new one does.
        let v1 = keys_document(&old, 1, &[&new], &old);
        let (st, body) = s.post("/api/v1/catalog/keys", &s.admin, v1.clone());
        assert_eq!((st, &body["created"]), (200, &Value::Bool(true)), "{body}");
        let (st, body) = s.put("/api/v1/catalog/metadata", &s.admin, signed(&old, 1, 24));
        assert_eq!(st, 422, "metadata signed by the retired key: {body}");
        let (st, body) = s.put("/api/v1/catalog/metadata", &s.admin, signed(&new, 1, 24));
        assert_eq!(st, 200, "{body}");

        // The agent, trusting only the old key on disk, follows the rotation from the answer.
        let outcome = hotpatch_agent::check_in_once(&state_dir, &anchors).expect("check in");
        assert_eq!(
            (outcome.catalog.version, &outcome.catalog.problem),
            (Some(1), &None),
            "{:?} {:?}",
            outcome.catalogs,
            outcome.notes
        );
        // Held across restarts: a fresh load of the state directory trusts the new key, not the old.
        let keys = hotpatch_agent::guard::Keys::publishers_only(anchors.clone());
        let machine = hotpatch_agent::guard::machine_keys(&state_dir, &keys).expect("machine keys");
        assert!(machine.publishers.get(&new.public().id()).is_some());
        assert!(machine.publishers.get(&old.public().id()).is_none());

        // A lying server passes on metadata signed by the retired key: refused, named.
        let forged = serde_json::to_string(&signed(&old, 7, 24)).expect("json");
        let anchor = old.public().id_hex();
        s.sql(&format!(
            "INSERT INTO signed_documents (org_id, kind, sha256, version, document, added, added_by, publisher) \
             SELECT org_id, 'catalog', 'forged', 7, '{}', 0, 'mallory', '{anchor}' FROM signed_documents LIMIT 1",
            forged.replace('\'', "''")
        ));
        let outcome = hotpatch_agent::check_in_once(&state_dir, &anchors).expect("check in");
        let problem = outcome.catalog.problem.clone().unwrap_or_default();
        assert!(problem.contains("not a current key"), "{:?} {:?}", outcome.catalogs, outcome.notes);
        let own = outcome.catalogs.iter().find(|c| c.publisher == anchor).map(|c| c.version);
        assert_eq!(own, Some(Some(1)), "the accepted version stays");
        s.sql("DELETE FROM signed_documents WHERE sha256 = 'forged'");

        // Versions only grow: the old keys document again is a no-op, an older or
        // different one at the same version is refused; the next rotation needs the current key.
        let (st, body) = s.post("/api/v1/catalog/keys", &s.admin, v1.clone());
        assert_eq!((st, &body["created"]), (200, &Value::Bool(false)), "{body}");
        let (st, body) = s.post("/api/v1/catalog/keys", &s.admin, keys_document(&old, 2, &[&newer], &old));
        assert_eq!(st, 422, "signed by the retired key: {body}");
        assert!(body.to_string().contains("retired key signs nothing"), "{body}");
        let (st, body) = s.post("/api/v1/catalog/keys", &s.admin, keys_document(&old, 2, &[&newer], &new));
        assert_eq!(st, 200, "{body}");
        let (st, body) = s.post("/api/v1/catalog/keys", &s.admin, keys_document(&old, 1, &[&new, &newer], &new));
        assert_eq!(st, 422, "{body}");
        assert!(body.to_string().contains("replayed"), "{body}");
        let outcome = hotpatch_agent::check_in_once(&state_dir, &anchors).expect("check in");
        assert!(
            outcome.notes.iter().all(|n| !n.contains("keys document refused")),
            "{:?} {:?}",
            outcome.catalogs,
            outcome.notes
        );
        let machine = hotpatch_agent::guard::machine_keys(&state_dir, &keys).expect("machine keys");
        assert_eq!(machine.publishers.key_ids().collect::<Vec<_>>(), [newer.public().id_hex()]);
    }
}

#[test]
fn two_publishers_each_sign_their_own_catalog_and_one_going_stale_leaves_the_other_current() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = enrolled(&s, dir.path());
        let (a, b) = (test_key(), SecretKey::from_seed([30; 32]));
        let body = serde_json::json!({ "label": "second publisher", "public_key": b.public().to_text() });
        let (st, added) = s.post("/api/v1/trusted-keys", &s.admin, body);
        assert_eq!(st, 200, "{added}");
        let anchors = hotpatch_format::TrustStore::from_keys([a.public(), b.public()]);

        // Each publisher's versions are its own: b's version 1 after a's version 9.
        let (st, body) = s.put("/api/v1/catalog/metadata", &s.admin, signed(&a, 9, 24));
        assert_eq!(st, 200, "{body}");
        let (st, body) = s.put("/api/v1/catalog/metadata", &s.admin, signed(&b, 1, 24));
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["publisher"].as_str(), Some(b.public().id_hex().as_str()));
        let (st, body) = s.put("/api/v1/catalog/metadata", &s.admin, signed(&a, 9, 24));
        assert_eq!(st, 409, "a's own version does not grow: {body}");

        let outcome = hotpatch_agent::check_in_once(&state_dir, &anchors).expect("check in");
        let versions: Vec<Option<u64>> = outcome.catalogs.iter().map(|c| c.version).collect();
        assert_eq!(outcome.catalogs.len(), 2, "{:?} {:?}", outcome.catalogs, outcome.notes);
        assert!(
            versions.contains(&Some(9)) && versions.contains(&Some(1)),
            "{:?} {:?}",
            outcome.catalogs,
            outcome.notes
        );
        assert!(
            outcome.catalogs.iter().all(|c| c.problem.is_none() && c.stale_since.is_none()),
            "{:?} {:?}",
            outcome.catalogs,
            outcome.notes
        );

        // b's newest metadata has expired and nothing newer comes (the server holds
        // on to it, as a frozen mirror would): b's catalog is stale, a's is not.
        let now = jiff::Timestamp::now();
        let mut old = metadata(2, vec![entry(2)]);
        old.issued = (now - jiff::SignedDuration::from_hours(2)).to_string();
        old.expires = (now - jiff::SignedDuration::from_hours(1)).to_string();
        let expired = serde_json::to_string(&old.sign(&b).expect("sign")).expect("json");
        s.sql(&format!(
            "INSERT INTO signed_documents (org_id, kind, sha256, version, document, added, added_by, publisher) \
             SELECT org_id, 'catalog', 'expired', 2, '{}', 0, 'mirror', '{}' FROM signed_documents LIMIT 1",
            expired.replace('\'', "''"),
            b.public().id_hex()
        ));
        let outcome = hotpatch_agent::check_in_once(&state_dir, &anchors).expect("check in");
        let stale: Vec<&str> =
            outcome.catalogs.iter().filter(|c| c.stale_since.is_some()).map(|c| c.publisher.as_str()).collect();
        assert_eq!(stale, [b.public().id_hex().as_str()], "{:?} {:?}", outcome.catalogs, outcome.notes);
        let a_status = outcome.catalogs.iter().find(|c| c.publisher == a.public().id_hex()).expect("a's catalog");
        assert_eq!((a_status.version, &a_status.stale_since), (Some(9), &None));
        assert!(
            outcome.notes.iter().any(|n| n.contains("catalog stale since")),
            "{:?} {:?}",
            outcome.catalogs,
            outcome.notes
        );
        let since = (now - jiff::SignedDuration::from_hours(1)).to_string();

        // The next check-in tells the server; the machine page and the compliance API say why it is not current.
        hotpatch_agent::check_in_once(&state_dir, &anchors).expect("check in");
        let machine_id = hotpatch_agent::state::load_credential(&state_dir).expect("credential").machine_id;
        let (_, c) = s.get("/api/v1/compliance/machines", &s.admin);
        let stale = c["stale_catalogs"].as_array().cloned().unwrap_or_default();
        assert_eq!(stale.len(), 1, "{c}");
        assert_eq!(stale[0]["machine_id"].as_str(), Some(machine_id.as_str()));
        assert_eq!(stale[0]["publisher"].as_str(), Some(b.public().id_hex().as_str()));
        assert_eq!(stale[0]["since"].as_str(), Some(since.as_str()));
        assert!(stale[0]["reason"].as_str().is_some_and(|r| r.contains(&format!("catalog stale since {since}"))));
        let (_, m) = s.get(&format!("/api/v1/machines/{machine_id}"), &s.admin);
        assert_eq!(m["catalogs_stale"][0]["since"].as_str(), Some(since.as_str()), "{m}");
        let page = view(&s, &format!("/ui/machines/{machine_id}"));
        let todo = page.split("id=\"todo\"").nth(1).unwrap_or_default();
        assert!(todo.contains(&format!("catalog stale since {since}")), "{page}");

        // Fresh metadata from b: accepted at the next check-in, and the one after clears the report.
        let (st, body) = s.put("/api/v1/catalog/metadata", &s.admin, signed(&b, 3, 24));
        assert_eq!(st, 200, "{body}");
        let outcome = hotpatch_agent::check_in_once(&state_dir, &anchors).expect("check in");
        assert!(outcome.catalogs.iter().all(|c| c.stale_since.is_none()), "{:?}", outcome.catalogs);
        hotpatch_agent::check_in_once(&state_dir, &anchors).expect("check in");
        let (_, c) = s.get("/api/v1/compliance/machines", &s.admin);
        assert_eq!(c["stale_catalogs"], serde_json::json!([]), "{c}");
    }
}

#[test]
fn a_check_in_with_a_malformed_stale_report_is_refused_and_names_the_field() {
    for backend in backends() {
        let s = TestServer::start(&backend);
        let (id, credential) = s.enroll(&["trust"], "stale-host");
        let mut body = checkin_body("stale-host", 2, &[], serde_json::json!([]));
        for (bad, word) in [
            (serde_json::json!([{ "publisher": "zz", "since": "2026-01-01T00:00:00Z" }]), "publisher"),
            (serde_json::json!([{ "publisher": "00112233aabbccdd", "since": "yesterday" }]), "since"),
        ] {
            body["catalogs_stale"] = bad;
            let (st, answer) = s.post("/api/v1/agent/checkin", &credential, body.clone());
            assert_eq!(st, 400, "{answer}");
            assert!(answer.to_string().contains(word), "{answer}");
        }
        let (_, m) = s.get(&format!("/api/v1/machines/{id}"), &s.admin);
        assert_eq!(m["catalogs_stale"], serde_json::json!([]), "nothing stored: {m}");
    }
}
