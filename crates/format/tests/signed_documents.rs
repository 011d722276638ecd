//! Signed catalog metadata from untrusted bytes: whatever arrives, parsing and
//! verification answer with an error or a document, never a panic, and no
//! change to a signed document's text or signature still verifies.

use hotpatch_format::{CatalogEntry, CatalogMetadata, SecretKey, SignedDocument, TrustStore, verify_catalog};
use proptest::prelude::*;

fn signed() -> (SignedDocument, TrustStore) {
    let key = SecretKey::from_seed([3; 32]);
    let m = CatalogMetadata {
        version: 3,
        issued: "2026-12-01T00:00:00Z".into(),
        expires: "2026-12-08T00:00:00Z".into(),
        targets: vec![CatalogEntry {
            build_id: "aabbccdd".into(),
            file_name: "libx.so.1".into(),
            patch_id: "x-1".into(),
            level: 1,
            sha256: "cd".repeat(32),
        }],
        revoked: vec![],
        revoked_keys: vec![],
    };
    (m.sign(&key).expect("sign"), TrustStore::from_keys([key.public()]))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (_, trust) = signed();
        if let Ok(doc) = SignedDocument::parse(&bytes) {
            let _ = verify_catalog(&doc, &trust);
        }
    }

    #[test]
    fn any_change_to_the_signed_text_or_signature_is_refused(at in any::<prop::sample::Index>(), byte in any::<u8>(), in_signature in any::<bool>()) {
        let (mut doc, trust) = signed();
        let field = if in_signature { &mut doc.signature } else { &mut doc.signed };
        let mut bytes = std::mem::take(field).into_bytes();
        let i = at.index(bytes.len());
        // Hex is read case-blind: the same signature bytes in capitals are no change.
        prop_assume!(!bytes[i].eq_ignore_ascii_case(&byte));
        bytes[i] = byte;
        *field = String::from_utf8_lossy(&bytes).into_owned();
        prop_assert!(verify_catalog(&doc, &trust).is_err());
    }
}
