//! Each publisher's signed catalog metadata as this machine last accepted it.
//! A document belongs to the publisher whose current key signed it, and is
//! judged against that publisher's record alone: accepted when it has not
//! expired and its version is not below the publisher's last accepted one (the
//! same version must be the same document). Whatever the server sends, once a
//! publisher's newest document expires its catalog is reported "stale since"
//! that expiry: a server that withholds new metadata cannot keep a machine
//! silently old. One publisher's stale or refused catalog says nothing about
//! another's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hotpatch_format::{Publishers, SignedDocument, VerifiedCatalog, VerifiedPackage};
use serde::{Deserialize, Serialize};

use crate::protocol::TargetReport;
use crate::state::{self, StateError};

/// Before publishers were told apart: one record for the one catalog.
const LEGACY_ACCEPTED: &str = "catalog-metadata.json";
const LEGACY_NEWEST: &str = "catalog-newest.json";
/// Per publisher anchor: the document accepted last.
const ACCEPTED: &str = "catalogs.json";
/// Per publisher anchor: the highest version of genuine metadata ever seen,
/// accepted or expired: versions below it are replays, and its expiry says
/// whether the catalog is stale.
const NEWEST: &str = "catalogs-newest.json";
const STATUS: &str = "catalog-status.json";
const STATUSES: &str = "catalog-statuses.json";

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

/// What a check-in learnt about one publisher's catalog (or, as the summary,
/// about all of them); kept in the state directory for `readiness`, `status`
/// and the next check-in, and printed with the check-in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogStatus {
    /// The publisher's anchor key id; empty in a summary of several, or for a
    /// document no trusted publisher signed.
    #[serde(default)]
    pub publisher: String,
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
        if parts.is_empty() {
            return None;
        }
        let who = if self.publisher.is_empty() { String::new() } else { format!("publisher {}: ", self.publisher) };
        Some(format!("{who}{}", parts.join("; ")))
    }

    /// Several publishers' statuses as one: the earliest expiry and staleness,
    /// every problem; the version only when there is a single publisher.
    pub fn summary(all: &[CatalogStatus]) -> CatalogStatus {
        if let [one] = all {
            return one.clone();
        }
        let problems: Vec<String> = all.iter().filter(|s| s.problem.is_some()).filter_map(|s| s.describe()).collect();
        CatalogStatus {
            publisher: String::new(),
            version: None,
            expires: all.iter().filter_map(|s| s.expires.clone()).min(),
            stale_since: all.iter().filter_map(|s| s.stale_since.clone()).min(),
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }
}

/// Each publisher's accepted catalog metadata, and who signs for whom: what a
/// package is checked against.
#[derive(Debug, Clone, Default)]
pub struct Catalogs {
    pub accepted: BTreeMap<String, VerifiedCatalog>,
    pub publishers: Publishers,
}

impl Catalogs {
    /// A package's hash against its own publisher's accepted metadata: a level
    /// that metadata lists must be exactly the package the publisher listed.
    pub fn check_listed(&self, package: &VerifiedPackage, sha256: &str) -> Result<(), String> {
        let own = self.publishers.publisher_of(&package.key_id).and_then(|a| self.accepted.get(a));
        check_listed(own, &package.manifest.target.build_id, package.manifest.level, sha256)
    }
}

pub struct MetadataOutcome {
    /// One per publisher with a record or a document this time (sorted by anchor),
    /// plus one for a document no trusted publisher signed.
    pub statuses: Vec<CatalogStatus>,
    /// The summary of `statuses`.
    pub status: CatalogStatus,
    /// The documents accepted at this check-in (new or the same as before), by anchor.
    pub accepted: BTreeMap<String, VerifiedCatalog>,
}

/// The records of every publisher, as kept in the state directory.
struct Records {
    accepted: BTreeMap<String, Accepted>,
    newest: BTreeMap<String, Newest>,
}

impl Records {
    fn load(dir: &Path, publishers: &Publishers) -> Result<Records, StateError> {
        let accepted: Option<BTreeMap<String, Accepted>> = state::read_json(&dir.join(ACCEPTED))?;
        let newest: Option<BTreeMap<String, Newest>> = state::read_json(&dir.join(NEWEST))?;
        if let (Some(accepted), Some(newest)) = (accepted.clone(), newest.clone()) {
            return Ok(Records { accepted, newest });
        }
        // The single record kept before publishers were told apart belongs to
        // the publisher whose key signed it.
        let mut records = Records { accepted: accepted.unwrap_or_default(), newest: newest.unwrap_or_default() };
        let legacy: Option<Accepted> = state::read_json(&dir.join(LEGACY_ACCEPTED))?;
        let legacy_newest: Option<Newest> = state::read_json(&dir.join(LEGACY_NEWEST))?;
        let owner = legacy.as_ref().and_then(|old| publishers.iter().find(|p| publishers.owns(&p.anchor, &old.key_id)));
        if let (Some(old), Some(p)) = (legacy.clone(), owner) {
            if let Some(n) = legacy_newest {
                records.newest.entry(p.anchor.clone()).or_insert(n);
            }
            records.accepted.entry(p.anchor.clone()).or_insert(old);
        }
        Ok(records)
    }
}

/// Judges the documents a server sent (possibly none) at time `now`, each
/// against its own publisher's record, records what is accepted durably, and
/// returns each catalog's status.
pub fn receive(
    dir: &Path,
    docs: &[SignedDocument],
    publishers: &Publishers,
    now: jiff::Timestamp,
) -> Result<MetadataOutcome, StateError> {
    let mut records = Records::load(dir, publishers)?;
    let mut accepted = BTreeMap::new();
    let mut problems: BTreeMap<String, String> = BTreeMap::new();
    for doc in docs {
        let Some(anchor) = publishers.publisher_of(&doc.key_id).map(str::to_string) else {
            // A key its own publisher retired: that publisher's catalog is the one refused.
            let (who, problem) = match publishers.retired_by(&doc.key_id) {
                Some(anchor) => (
                    anchor.to_string(),
                    format!(
                        "catalog metadata refused: key {} is not a current key of publisher {anchor} (retired or revoked): it is not trusted any more",
                        doc.key_id
                    ),
                ),
                None => (
                    String::new(),
                    format!(
                        "catalog metadata refused: signed by key {}, not a current key of a publisher this machine trusts",
                        doc.key_id
                    ),
                ),
            };
            problems.insert(who, problem);
            continue;
        };
        match receive_one(dir, &mut records, &anchor, doc, publishers, now)? {
            Ok(v) => {
                accepted.insert(anchor, v);
            }
            Err(message) => {
                problems.insert(anchor, message);
            }
        }
    }
    let statuses = statuses(&records, &mut problems, now);
    let status = CatalogStatus::summary(&statuses);
    // Only for readiness, status and the next check-in: losing them costs a
    // stale display, not a guarantee.
    let written =
        state::write_durable(dir, STATUS, &status).and_then(|()| state::write_durable(dir, STATUSES, &statuses));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot record the catalog status");
    }
    Ok(MetadataOutcome { statuses, status, accepted })
}

/// One document of publisher `anchor`: judged, and the records moved on.
fn receive_one(
    dir: &Path,
    records: &mut Records,
    anchor: &str,
    doc: &SignedDocument,
    publishers: &Publishers,
    now: jiff::Timestamp,
) -> Result<Result<VerifiedCatalog, String>, StateError> {
    let keys = publishers.get(anchor).map(|p| p.keys.clone()).unwrap_or_default();
    let judged = judge(doc, &keys, records.accepted.get(anchor), records.newest.get(anchor), now);
    let seen = judged.as_ref().map_or_else(|r| r.genuine.clone(), |v| Some(newest_of(v)));
    if let Some(seen) = seen.filter(|s| records.newest.get(anchor).is_none_or(|n| s.version > n.version)) {
        records.newest.insert(anchor.to_string(), seen);
        state::write_durable(dir, NEWEST, &records.newest)?;
    }
    Ok(match judged {
        Ok(v) => {
            if records.accepted.get(anchor).is_none_or(|l| l.sha256 != v.sha256) {
                records.accepted.insert(anchor.to_string(), accepted_of(&v, doc));
                state::write_durable(dir, ACCEPTED, &records.accepted)?;
            }
            Ok(v)
        }
        Err(refused) => Err(refused.message),
    })
}

fn statuses(records: &Records, problems: &mut BTreeMap<String, String>, now: jiff::Timestamp) -> Vec<CatalogStatus> {
    let anchors: BTreeSet<&String> =
        records.accepted.keys().chain(records.newest.keys()).chain(problems.keys()).collect();
    anchors
        .into_iter()
        .map(|anchor| {
            let last = records.accepted.get(anchor);
            let newest_expiry = records.newest.get(anchor).and_then(|n| n.expires.parse::<jiff::Timestamp>().ok());
            CatalogStatus {
                publisher: anchor.clone(),
                version: last.map(|l| l.version),
                expires: last.map(|l| l.expires.clone()),
                stale_since: newest_expiry.filter(|e| now >= *e).map(|e| e.to_string()),
                problem: problems.get(anchor).cloned(),
            }
        })
        .collect()
}

/// Each publisher whose newest metadata has expired by `now`, and since when:
/// what the next check-in tells the server.
pub fn stale_now(dir: &Path, now: jiff::Timestamp) -> Result<Vec<(String, String)>, StateError> {
    let newest: BTreeMap<String, Newest> = state::read_json(&dir.join(NEWEST))?.unwrap_or_default();
    Ok(newest
        .into_iter()
        .filter_map(|(anchor, n)| {
            let e = n.expires.parse::<jiff::Timestamp>().ok()?;
            (now >= e).then(|| (anchor, e.to_string()))
        })
        .collect())
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

/// The summary recorded at the last check-in, if any.
pub fn last_status(dir: &Path) -> Result<Option<CatalogStatus>, StateError> {
    state::read_json(&dir.join(STATUS))
}

/// Each publisher's status recorded at the last check-in.
pub fn last_statuses(dir: &Path) -> Result<Vec<CatalogStatus>, StateError> {
    Ok(state::read_json(&dir.join(STATUSES))?.unwrap_or_default())
}

struct Refused {
    message: String,
    /// A genuine document refused only because it expired: it still tells
    /// that the publisher has moved on to its version.
    genuine: Option<Newest>,
}

fn judge(
    doc: &SignedDocument,
    keys: &hotpatch_format::TrustStore,
    last: Option<&Accepted>,
    newest: Option<&Newest>,
    now: jiff::Timestamp,
) -> Result<VerifiedCatalog, Refused> {
    let refuse = |message: String| Refused { message, genuine: None };
    let v = hotpatch_format::verify_catalog(doc, keys).map_err(|e| refuse(format!("catalog metadata refused: {e}")))?;
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
    use hotpatch_format::{CatalogEntry, CatalogMetadata, SecretKey, TrustStore};

    const BUILD: &str = "00112233445566778899aabbccddeeff00112233";

    fn doc(key: &SecretKey, version: u64, expires: &str) -> SignedDocument {
        listing(key, version, expires, &[])
    }

    fn listing(key: &SecretKey, version: u64, expires: &str, targets: &[(u32, &str)]) -> SignedDocument {
        let m = CatalogMetadata {
            version,
            issued: "2026-01-01T00:00:00Z".into(),
            expires: expires.into(),
            targets: targets
                .iter()
                .map(|(level, sha)| CatalogEntry {
                    build_id: BUILD.into(),
                    file_name: "svc".into(),
                    patch_id: format!("svc-fix-{version}"),
                    level: *level,
                    sha256: sha.to_string(),
                })
                .collect(),
            revoked: Vec::new(),
            revoked_keys: Vec::new(),
        };
        m.sign(key).expect("sign")
    }

    fn at(t: &str) -> jiff::Timestamp {
        t.parse().expect("time")
    }

    #[test]
    fn versions_only_grow_and_expiry_makes_the_catalog_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::from_seed([9; 32]);
        let trust = Publishers::from_anchors(&TrustStore::from_keys([key.public()]));
        let now = at("2026-06-01T00:00:00Z");
        let v5 = doc(&key, 5, "2026-07-01T00:00:00Z");
        let got = receive(dir.path(), std::slice::from_ref(&v5), &trust, now).expect("receive");
        assert!(got.accepted.len() == 1 && got.status.problem.is_none(), "{:?}", got.status);
        // Replay of an older, still valid document: refused, the accepted one stays.
        let v4 = doc(&key, 4, "2026-08-01T00:00:00Z");
        let got = receive(dir.path(), &[v4], &trust, now).expect("receive");
        assert!(got.accepted.is_empty());
        assert!(got.status.problem.as_deref().is_some_and(|p| p.contains("replayed")), "{:?}", got.status);
        assert_eq!(got.status.version, Some(5));
        // Nothing new while the accepted one expires: stale since its expiry.
        let later = at("2026-07-02T00:00:00Z");
        let got = receive(dir.path(), &[v5], &trust, later).expect("receive");
        assert_eq!(got.status.stale_since.as_deref(), Some("2026-07-01T00:00:00Z"));
        assert!(got.status.describe().is_some_and(|d| d.contains("catalog stale since 2026-07-01T00:00:00Z")));
        assert_eq!(last_status(dir.path()).expect("status"), Some(got.status));
        assert_eq!(stale_now(dir.path(), later).expect("stale").len(), 1);
        // A fresh version clears it.
        let v6 = doc(&key, 6, "2026-09-01T00:00:00Z");
        let got = receive(dir.path(), &[v6], &trust, later).expect("receive");
        assert_eq!((got.status.version, got.status.stale_since), (Some(6), None));
    }

    #[test]
    fn each_publisher_is_judged_by_its_own_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        let (ida, idb) = (a.public().id_hex(), b.public().id_hex());
        let publishers = Publishers::from_anchors(&TrustStore::from_keys([a.public(), b.public()]));
        let now = at("2026-06-01T00:00:00Z");
        let a9 = listing(&a, 9, "2026-06-02T00:00:00Z", &[(2, &"aa".repeat(32))]);
        let b3 = listing(&b, 3, "2026-07-01T00:00:00Z", &[(2, &"bb".repeat(32))]);
        let got = receive(dir.path(), &[a9.clone(), b3.clone()], &publishers, now).expect("receive");
        let mut want = vec![ida.clone(), idb.clone()];
        want.sort();
        assert_eq!(got.accepted.keys().cloned().collect::<Vec<_>>(), want);
        // b's version 3 is not a replay because a is at 9: versions are per publisher.
        assert!(got.statuses.iter().all(|s| s.problem.is_none()), "{:?}", got.statuses);

        // A day later a's catalog is stale; b's is not, and b's packages are still judged by b's.
        let later = at("2026-06-03T00:00:00Z");
        let got = receive(dir.path(), &[a9, b3], &publishers, later).expect("receive");
        let stale: Vec<&str> =
            got.statuses.iter().filter(|s| s.stale_since.is_some()).map(|s| s.publisher.as_str()).collect();
        assert_eq!(stale, [ida.as_str()]);
        assert_eq!(stale_now(dir.path(), later).expect("stale"), [(ida.clone(), "2026-06-02T00:00:00Z".to_string())]);
        let catalogs = Catalogs { accepted: got.accepted, publishers: publishers.clone() };
        assert!(catalogs.accepted.contains_key(&idb) && !catalogs.accepted.contains_key(&ida));
        assert!(check_listed(catalogs.accepted.get(&idb), BUILD, 2, &"bb".repeat(32)).is_ok());
        assert!(check_listed(catalogs.accepted.get(&idb), BUILD, 2, &"aa".repeat(32)).is_err());

        // Metadata of a key no publisher holds is refused and said so.
        let stranger = doc(&SecretKey::from_seed([3; 32]), 1, "2026-07-01T00:00:00Z");
        let got = receive(dir.path(), &[stranger], &publishers, now).expect("receive");
        assert!(got.status.problem.as_deref().is_some_and(|p| p.contains("not a current key")), "{:?}", got.status);
        assert_eq!(last_statuses(dir.path()).expect("statuses").len(), 3);
    }

    #[test]
    fn the_single_record_of_an_older_agent_is_kept_under_its_publisher() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::from_seed([5; 32]);
        let publishers = Publishers::from_anchors(&TrustStore::from_keys([key.public()]));
        let v7 = doc(&key, 7, "2026-09-01T00:00:00Z");
        let old = Accepted {
            version: 7,
            sha256: v7.sha256(),
            expires: "2026-09-01T00:00:00Z".into(),
            key_id: key.public().id_hex(),
            document: v7,
        };
        state::write_durable(dir.path(), LEGACY_ACCEPTED, &old).expect("write");
        let newest = Newest { version: 7, expires: "2026-09-01T00:00:00Z".into() };
        state::write_durable(dir.path(), LEGACY_NEWEST, &newest).expect("write");
        // An older version replayed after the upgrade is still a replay.
        let v6 = doc(&key, 6, "2026-10-01T00:00:00Z");
        let got = receive(dir.path(), &[v6], &publishers, at("2026-06-01T00:00:00Z")).expect("receive");
        assert_eq!(got.status.version, Some(7));
        assert!(got.status.problem.as_deref().is_some_and(|p| p.contains("replayed")), "{:?}", got.status);
    }
}
