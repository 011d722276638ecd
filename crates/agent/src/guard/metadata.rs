//! The publisher's signed catalog metadata as this machine last accepted it.
//! A document is accepted when a trusted publisher signed it, it has not
//! expired, and its version is not below the last accepted one (the same
//! version must be the same document). Whatever the server sends, once the last
//! accepted document expires the catalog is reported "stale since" its expiry:
//! a server that withholds new metadata cannot keep a machine silently old.

use std::path::Path;

use hotpatch_format::{SignedDocument, TrustStore, VerifiedCatalog};
use serde::{Deserialize, Serialize};

use crate::protocol::TargetReport;
use crate::state::{self, StateError};

const ACCEPTED: &str = "catalog-metadata.json";
/// The highest version of genuine metadata ever seen, accepted or expired:
/// versions below it are replays, and its expiry says whether the catalog is stale.
const NEWEST: &str = "catalog-newest.json";
const STATUS: &str = "catalog-status.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Accepted {
    version: u64,
    sha256: String,
    expires: String,
    key_id: String,
    document: SignedDocument,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Newest {
    version: u64,
    expires: String,
}

/// What a check-in learnt about the publisher's catalog; kept in the state
/// directory for `readiness` and printed with the check-in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogStatus {
    /// The version last accepted, if any.
    pub version: Option<u64>,
    pub expires: Option<String>,
    /// Set once the newest trustworthy metadata known has expired.
    pub stale_since: Option<String>,
    /// Why the document of this check-in was refused.
    pub problem: Option<String>,
}

impl CatalogStatus {
    /// One line for people, `None` when there is nothing to say.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(since) = &self.stale_since {
            parts.push(format!("catalog stale since {since}"));
        }
        if let Some(p) = &self.problem {
            parts.push(p.clone());
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

pub struct MetadataOutcome {
    pub status: CatalogStatus,
    /// The document accepted at this check-in (new or the same as before).
    pub accepted: Option<VerifiedCatalog>,
}

/// Judges the document a server sent (or its absence) at time `now`, records
/// an accepted one durably, and returns the catalog's status.
pub fn receive(
    dir: &Path,
    doc: Option<&SignedDocument>,
    publishers: &TrustStore,
    now: jiff::Timestamp,
) -> Result<MetadataOutcome, StateError> {
    let mut last: Option<Accepted> = state::read_json(&dir.join(ACCEPTED))?;
    let mut newest: Option<Newest> = state::read_json(&dir.join(NEWEST))?;
    let mut outcome = MetadataOutcome { status: CatalogStatus::default(), accepted: None };
    if let Some(doc) = doc {
        let judged = judge(doc, publishers, last.as_ref(), newest.as_ref(), now);
        let seen = judged.as_ref().map_or_else(|r| r.genuine.clone(), |v| Some(newest_of(v)));
        if let Some(seen) = seen.filter(|s| newest.as_ref().is_none_or(|n| s.version > n.version)) {
            state::write_durable(dir, NEWEST, &seen)?;
            newest = Some(seen);
        }
        match judged {
            Ok(v) => {
                if last.as_ref().is_none_or(|l| l.sha256 != v.sha256) {
                    let accepted = accepted_of(&v, doc);
                    state::write_durable(dir, ACCEPTED, &accepted)?;
                    last = Some(accepted);
                }
                outcome.accepted = Some(v);
            }
            Err(refused) => outcome.status.problem = Some(refused.message),
        }
    }
    outcome.status.version = last.as_ref().map(|l| l.version);
    outcome.status.expires = last.as_ref().map(|l| l.expires.clone());
    let newest_expiry = newest.and_then(|n| n.expires.parse::<jiff::Timestamp>().ok());
    outcome.status.stale_since = newest_expiry.filter(|e| now >= *e).map(|e| e.to_string());
    // Only for readiness: losing it costs a stale display, not a guarantee.
    if let Err(e) = state::write_durable(dir, STATUS, &outcome.status) {
        tracing::warn!(error = %e, "cannot record the catalog status");
    }
    Ok(outcome)
}

fn newest_of(v: &VerifiedCatalog) -> Newest {
    Newest { version: v.metadata.version, expires: v.metadata.expires.clone() }
}

fn accepted_of(v: &VerifiedCatalog, doc: &SignedDocument) -> Accepted {
    Accepted {
        version: v.metadata.version,
        sha256: v.sha256.clone(),
        expires: v.metadata.expires.clone(),
        key_id: v.key_id.clone(),
        document: doc.clone(),
    }
}

/// The status recorded at the last check-in, if any.
pub fn last_status(dir: &Path) -> Result<Option<CatalogStatus>, StateError> {
    state::read_json(&dir.join(STATUS))
}

struct Refused {
    message: String,
    /// A genuine document refused only because it expired: it still tells
    /// that the publisher has moved on to its version.
    genuine: Option<Newest>,
}

fn judge(
    doc: &SignedDocument,
    publishers: &TrustStore,
    last: Option<&Accepted>,
    newest: Option<&Newest>,
    now: jiff::Timestamp,
) -> Result<VerifiedCatalog, Refused> {
    let refuse = |message: String| Refused { message, genuine: None };
    let v = hotpatch_format::verify_catalog(doc, publishers)
        .map_err(|e| refuse(format!("catalog metadata refused: {e}")))?;
    let version = v.metadata.version;
    if let Some(n) = newest.filter(|n| version < n.version) {
        return Err(refuse(format!(
            "catalog metadata version {version} refused: version {} was seen before (an old document replayed)",
            n.version
        )));
    }
    if last.is_some_and(|l| version == l.version && v.sha256 != l.sha256) {
        return Err(refuse(format!(
            "catalog metadata version {version} refused: it differs from the version {version} accepted before"
        )));
    }
    if v.is_expired(now) {
        return Err(Refused {
            message: format!("catalog metadata version {version} refused: it expired at {}", v.metadata.expires),
            genuine: Some(newest_of(&v)),
        });
    }
    Ok(v)
}

/// Targets running below the level the publisher's catalog lists: what a
/// server withholding a fix would leave behind, said out loud.
pub fn behind(catalog: &VerifiedCatalog, targets: &[TargetReport]) -> Vec<String> {
    let mut notes = Vec::new();
    for t in targets {
        let listed = catalog.metadata.targets.iter().find(|e| e.build_id == t.build_id);
        if let Some(e) = listed.filter(|e| e.level > t.applied_level) {
            notes.push(format!(
                "the publisher's catalog (version {}) lists level {} of {} ({}); this machine runs level {}",
                catalog.metadata.version, e.level, t.file_name, t.build_id, t.applied_level
            ));
        }
    }
    notes
}

/// A package's hash against the accepted metadata: a level the metadata lists
/// must be exactly the package the publisher listed.
pub fn check_listed(catalog: Option<&VerifiedCatalog>, build_id: &str, level: u32, sha256: &str) -> Result<(), String> {
    let Some(c) = catalog else { return Ok(()) };
    match c.metadata.targets.iter().find(|e| e.build_id == build_id && e.level == level) {
        Some(e) if e.sha256 != sha256 => Err(format!(
            "package hash {sha256} is not the {} the publisher's catalog (version {}) lists for level {level}",
            e.sha256, c.metadata.version
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotpatch_format::{CatalogMetadata, SecretKey};

    fn doc(key: &SecretKey, version: u64, expires: &str) -> SignedDocument {
        let m = CatalogMetadata {
            version,
            issued: "2026-01-01T00:00:00Z".into(),
            expires: expires.into(),
            targets: Vec::new(),
            revoked: Vec::new(),
            revoked_keys: Vec::new(),
        };
        m.sign(key).expect("sign")
    }

    #[test]
    fn versions_only_grow_and_expiry_makes_the_catalog_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::from_seed([9; 32]);
        let trust = TrustStore::from_keys([key.public()]);
        let now: jiff::Timestamp = "2026-06-01T00:00:00Z".parse().expect("time");
        let v5 = doc(&key, 5, "2026-07-01T00:00:00Z");
        let got = receive(dir.path(), Some(&v5), &trust, now).expect("receive");
        assert!(got.accepted.is_some() && got.status.problem.is_none(), "{:?}", got.status);
        // Replay of an older, still valid document: refused, the accepted one stays.
        let v4 = doc(&key, 4, "2026-08-01T00:00:00Z");
        let got = receive(dir.path(), Some(&v4), &trust, now).expect("receive");
        assert!(got.accepted.is_none());
        assert!(got.status.problem.as_deref().is_some_and(|p| p.contains("replayed")), "{:?}", got.status);
        assert_eq!(got.status.version, Some(5));
        // Nothing new while the accepted one expires: stale since its expiry.
        let later: jiff::Timestamp = "2026-07-02T00:00:00Z".parse().expect("time");
        let got = receive(dir.path(), Some(&v5), &trust, later).expect("receive");
        assert_eq!(got.status.stale_since.as_deref(), Some("2026-07-01T00:00:00Z"));
        assert!(got.status.describe().is_some_and(|d| d.contains("catalog stale since 2026-07-01T00:00:00Z")));
        assert_eq!(last_status(dir.path()).expect("status"), Some(got.status));
        // A fresh version clears it.
        let v6 = doc(&key, 6, "2026-09-01T00:00:00Z");
        let got = receive(dir.path(), Some(&v6), &trust, later).expect("receive");
        assert_eq!((got.status.version, got.status.stale_since), (Some(6), None));
    }
}
