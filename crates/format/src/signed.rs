//! Signed statements of a publisher beside the packages (docs/FORMAT.md,
//! "Signed catalog metadata"): the catalog metadata, a small expiring document
//! that says which level of each target is the latest and which levels are
//! revoked, and the revocation statement that alone lets a machine roll a level
//! back. Both travel through a server that is not trusted for content, so a
//! machine checks them against its own keys; expiry and version numbers keep
//! an old document from being replayed for ever (TUF's freeze attack).
//!
//! A document is an envelope whose `signed` field is the exact JSON text that
//! was signed, so no canonical JSON is needed: the bytes checked are the bytes
//! the publisher produced.

use serde::{Deserialize, Serialize};

use crate::keys::{KEY_ID_LEN, SecretKey, TrustStore, key_id_hex};
use crate::manifest::{check_hex, check_patch_id, check_text};
use crate::{FormatError, sha256_hex};

/// Context of a catalog metadata signature (distinct from a package's).
const CATALOG_CONTEXT: &[u8] = b"hotpatch catalog v1\0";
/// Context of a revocation statement's signature.
const REVOCATION_CONTEXT: &[u8] = b"hotpatch revocation v1\0";
/// Context of a publisher's keys document (key rotation, `rotation`).
const KEYS_CONTEXT: &[u8] = b"hotpatch keys v1\0";
/// Largest `signed` text accepted: thousands of targets fit with room to spare.
pub const MAX_SIGNED_LEN: usize = 4 << 20;
/// Largest envelope accepted: the signed text is compact JSON carried inside a
/// JSON string, where each `"` or `\\` it holds takes two bytes, plus the
/// envelope's own fields.
pub const MAX_DOCUMENT_LEN: usize = 2 * MAX_SIGNED_LEN + 4096;
const MAX_LEVELS: usize = 1024;

/// What kind of document an envelope holds; the signature context follows it,
/// so a document of one kind never verifies as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentKind {
    Catalog,
    Revocation,
    Keys,
}

impl DocumentKind {
    fn context(self) -> &'static [u8] {
        match self {
            DocumentKind::Catalog => CATALOG_CONTEXT,
            DocumentKind::Revocation => REVOCATION_CONTEXT,
            DocumentKind::Keys => KEYS_CONTEXT,
        }
    }
}

/// The envelope as stored and sent: the signed text, the key id and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDocument {
    pub kind: DocumentKind,
    pub signed: String,
    pub key_id: String,
    pub signature: String,
}

impl SignedDocument {
    /// Parses an envelope from untrusted bytes (the signature is not checked yet).
    pub fn parse(bytes: &[u8]) -> Result<SignedDocument, FormatError> {
        if bytes.len() > MAX_DOCUMENT_LEN {
            return Err(FormatError::TooLarge {
                what: "signed document",
                len: bytes.len() as u64,
                limit: MAX_DOCUMENT_LEN as u64,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a signed document: {e}")))
    }

    pub fn to_json(&self) -> String {
        // A struct of strings always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A short fingerprint of the whole envelope, to tell two documents apart.
    pub fn sha256(&self) -> String {
        sha256_hex(self.signed.as_bytes())
    }

    pub(crate) fn sign(kind: DocumentKind, body: String, key: &SecretKey) -> SignedDocument {
        let signature = key.sign_in(kind.context(), body.as_bytes());
        SignedDocument { kind, signed: body, key_id: key.public().id_hex(), signature: hex::encode(signature) }
    }

    /// Checks the signature against `trust` and returns the signed text and the key id.
    pub(crate) fn open(&self, kind: DocumentKind, trust: &TrustStore) -> Result<&str, FormatError> {
        if self.kind != kind {
            return Err(bad(format!("expected a {kind:?} document, found {:?}", self.kind)));
        }
        if self.signed.len() > MAX_SIGNED_LEN {
            return Err(FormatError::TooLarge {
                what: "signed text",
                len: self.signed.len() as u64,
                limit: MAX_SIGNED_LEN as u64,
            });
        }
        let id: [u8; KEY_ID_LEN] = hex::decode(&self.key_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(format!("key_id {:?} is not {KEY_ID_LEN} bytes of hex", clip(&self.key_id))))?;
        let signature: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("signature is not 64 bytes of hex".to_string()))?;
        let key = trust.get(&id).ok_or_else(|| FormatError::UnknownKey(key_id_hex(&id)))?;
        if !key.verify_in(kind.context(), self.signed.as_bytes(), &signature) {
            return Err(FormatError::BadSignature(key_id_hex(&id)));
        }
        Ok(&self.signed)
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::Signed(msg.into())
}

pub(crate) fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

pub(crate) fn parse_time(field: &str, text: &str) -> Result<jiff::Timestamp, FormatError> {
    text.parse().map_err(|e| bad(format!("{field} {:?} is not an RFC 3339 time: {e}", clip(text))))
}

/// Levels of one target that must no longer run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub build_id: String,
    pub levels: Vec<u32>,
    pub reason: String,
}

impl Revocation {
    fn validate(&self) -> Result<(), FormatError> {
        check_hex("revocation build_id", &self.build_id, 4..=64).map_err(to_signed)?;
        if self.levels.is_empty() || self.levels.len() > MAX_LEVELS || self.levels.contains(&0) {
            return Err(bad(format!("revocation of {} must name 1 to {MAX_LEVELS} levels, each ≥ 1", self.build_id)));
        }
        check_text("revocation reason", &self.reason, 1, 4096).map_err(to_signed)
    }
}

/// A manifest check's message, re-labelled as a signed document's problem.
fn to_signed(e: FormatError) -> FormatError {
    match e {
        FormatError::Manifest(m) => FormatError::Signed(m),
        other => other,
    }
}

/// The latest level of one target in the publisher's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub build_id: String,
    pub file_name: String,
    pub patch_id: String,
    pub level: u32,
    /// SHA-256 of the package file.
    pub sha256: String,
}

/// The publisher's catalog as of `issued`, valid until `expires`. `version`
/// only grows: a machine refuses a lower one than it accepted before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogMetadata {
    pub version: u64,
    pub issued: String,
    pub expires: String,
    pub targets: Vec<CatalogEntry>,
    #[serde(default)]
    pub revoked: Vec<Revocation>,
    /// Ids of publisher keys no longer to be trusted for anything (a key lost
    /// or retired). A machine that accepts this metadata stops trusting them
    /// for good; adding a key stays a root operator's act on the machine.
    #[serde(default)]
    pub revoked_keys: Vec<String>,
}

impl CatalogMetadata {
    pub fn validate(&self) -> Result<(), FormatError> {
        let issued = parse_time("issued", &self.issued)?;
        let expires = parse_time("expires", &self.expires)?;
        if expires <= issued {
            return Err(bad(format!("expires {} is not after issued {}", self.expires, self.issued)));
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.targets {
            check_hex("target build_id", &t.build_id, 4..=64).map_err(to_signed)?;
            check_hex("target sha256", &t.sha256, 32..=32).map_err(to_signed)?;
            check_patch_id(&t.patch_id).map_err(to_signed)?;
            check_text("target file_name", &t.file_name, 1, 255).map_err(to_signed)?;
            if t.level == 0 {
                return Err(bad(format!("target {} has level 0", t.build_id)));
            }
            if !seen.insert((&t.build_id, &t.file_name)) {
                return Err(bad(format!("target {} {} is listed twice", t.build_id, t.file_name)));
            }
        }
        for id in &self.revoked_keys {
            check_hex("revoked key id", id, KEY_ID_LEN..=KEY_ID_LEN).map_err(to_signed)?;
        }
        self.revoked.iter().try_for_each(Revocation::validate)
    }

    /// Signs the metadata with a publisher key.
    pub fn sign(&self, key: &SecretKey) -> Result<SignedDocument, FormatError> {
        self.validate()?;
        let body = serde_json::to_string(self).map_err(|e| bad(e.to_string()))?;
        Ok(SignedDocument::sign(DocumentKind::Catalog, body, key))
    }
}

/// Catalog metadata whose signature was checked; freshness is the reader's
/// to judge against its own clock and its own last accepted version.
#[derive(Debug, Clone)]
pub struct VerifiedCatalog {
    pub metadata: CatalogMetadata,
    pub expires: jiff::Timestamp,
    pub key_id: String,
    /// SHA-256 of the signed text: the same version must always be the same document.
    pub sha256: String,
}

impl VerifiedCatalog {
    pub fn is_expired(&self, now: jiff::Timestamp) -> bool {
        now >= self.expires
    }

    /// The levels this metadata revokes for `build_id`.
    pub fn revoked_levels(&self, build_id: &str) -> impl Iterator<Item = u32> + '_ {
        let wanted = build_id.to_string();
        self.metadata.revoked.iter().filter(move |r| r.build_id == wanted).flat_map(|r| r.levels.iter().copied())
    }
}

/// Checks catalog metadata against the publisher keys in `trust`.
pub fn verify_catalog(doc: &SignedDocument, trust: &TrustStore) -> Result<VerifiedCatalog, FormatError> {
    let text = doc.open(DocumentKind::Catalog, trust)?;
    let metadata: CatalogMetadata =
        serde_json::from_str(text).map_err(|e| bad(format!("catalog metadata is malformed: {e}")))?;
    metadata.validate()?;
    let expires = parse_time("expires", &metadata.expires)?;
    Ok(VerifiedCatalog { metadata, expires, key_id: doc.key_id.clone(), sha256: doc.sha256() })
}

/// A revocation on its own: signed by a publisher or by the organisation's
/// operations key, it is what lets a machine roll a level back when a server asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationStatement {
    #[serde(flatten)]
    pub revocation: Revocation,
    pub issued: String,
}

impl RevocationStatement {
    pub fn sign(&self, key: &SecretKey) -> Result<SignedDocument, FormatError> {
        self.revocation.validate()?;
        parse_time("issued", &self.issued)?;
        let body = serde_json::to_string(self).map_err(|e| bad(e.to_string()))?;
        Ok(SignedDocument::sign(DocumentKind::Revocation, body, key))
    }
}

/// Checks a revocation statement against `trust` (publisher and operations keys).
pub fn verify_revocation(doc: &SignedDocument, trust: &TrustStore) -> Result<(Revocation, String), FormatError> {
    let text = doc.open(DocumentKind::Revocation, trust)?;
    let statement: RevocationStatement =
        serde_json::from_str(text).map_err(|e| bad(format!("revocation statement is malformed: {e}")))?;
    statement.revocation.validate()?;
    parse_time("issued", &statement.issued)?;
    Ok((statement.revocation, doc.key_id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILD: &str = "00112233445566778899aabbccddeeff00112233";

    fn metadata(version: u64) -> CatalogMetadata {
        CatalogMetadata {
            version,
            issued: "2026-12-01T00:00:00Z".into(),
            expires: "2026-12-08T00:00:00Z".into(),
            targets: vec![CatalogEntry {
                build_id: BUILD.into(),
                file_name: "svc".into(),
                patch_id: "svc-fix".into(),
                level: 2,
                sha256: "ab".repeat(32),
            }],
            revoked: vec![Revocation { build_id: BUILD.into(), levels: vec![1], reason: "crashes".into() }],
            revoked_keys: vec![key(5).public().id_hex()],
        }
    }

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed([seed; 32])
    }

    #[test]
    fn signed_metadata_verifies_only_with_the_trusted_key_and_unaltered() {
        let k = key(1);
        let trust = TrustStore::from_keys([k.public()]);
        let doc = metadata(7).sign(&k).expect("sign");
        let parsed = SignedDocument::parse(doc.to_json().as_bytes()).expect("parse");
        let v = verify_catalog(&parsed, &trust).expect("verify");
        assert_eq!(v.metadata, metadata(7));
        assert_eq!(v.revoked_levels(BUILD).collect::<Vec<_>>(), [1]);
        assert!(!v.is_expired("2026-12-07T23:59:59Z".parse().expect("time")));
        assert!(v.is_expired("2026-12-08T00:00:00Z".parse().expect("time")));

        let other = TrustStore::from_keys([key(2).public()]);
        assert!(matches!(verify_catalog(&doc, &other), Err(FormatError::UnknownKey(_))));
        let mut altered = doc.clone();
        altered.signed = altered.signed.replace("\"version\":7", "\"version\":9");
        assert!(matches!(verify_catalog(&altered, &trust), Err(FormatError::BadSignature(_))));
    }

    #[test]
    fn a_document_of_one_kind_never_verifies_as_the_other() {
        let k = key(3);
        let trust = TrustStore::from_keys([k.public()]);
        let statement = RevocationStatement {
            revocation: Revocation { build_id: BUILD.into(), levels: vec![2], reason: "bad fix".into() },
            issued: "2026-12-02T00:00:00Z".into(),
        };
        let doc = statement.sign(&k).expect("sign");
        let (r, _) = verify_revocation(&doc, &trust).expect("verify");
        assert_eq!(r.levels, [2]);
        let mut relabelled = doc.clone();
        relabelled.kind = DocumentKind::Catalog;
        assert!(verify_catalog(&relabelled, &trust).is_err());
        // Same text under the other context: the signature does not carry over.
        let as_revocation = SignedDocument { kind: DocumentKind::Revocation, ..metadata(1).sign(&k).expect("sign") };
        assert!(matches!(verify_revocation(&as_revocation, &trust), Err(FormatError::BadSignature(_))));
    }

    #[test]
    fn malformed_documents_are_named_not_panicked_on() {
        let k = key(4);
        let mut m = metadata(1);
        m.expires = m.issued.clone();
        assert!(m.sign(&k).expect_err("expiry").to_string().contains("not after issued"));
        let mut m = metadata(1);
        m.targets[0].level = 0;
        assert!(m.sign(&k).is_err());
        let mut m = metadata(1);
        m.revoked[0].levels.clear();
        assert!(m.sign(&k).is_err());
        let mut m = metadata(1);
        m.revoked_keys.push("xyz".into());
        assert!(m.sign(&k).expect_err("key id").to_string().contains("revoked key id"));
        for junk in
            [&b"{}"[..], b"not json", b"{\"kind\":\"catalog\",\"signed\":\"x\",\"key_id\":\"zz\",\"signature\":\"\"}"]
        {
            let e = SignedDocument::parse(junk)
                .and_then(|d| verify_catalog(&d, &TrustStore::from_keys([k.public()])))
                .expect_err("junk");
            assert!(!e.to_string().is_empty());
        }
    }
}
