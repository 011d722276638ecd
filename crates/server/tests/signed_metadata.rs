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
    let one = serde_json::to_string(&entry(0)).expect("json").len() + 1;
    let count = (MAX_SIGNED_LEN - 1024) / one;
    let m = metadata(version, (0..count).map(entry).collect());
    let doc = m.sign(key).expect("sign");
    assert!(doc.signed.len() <= MAX_SIGNED_LEN && doc.signed.len() > MAX_SIGNED_LEN - 2 * one);
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
