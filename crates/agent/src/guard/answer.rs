//! The order in which a check-in answer's signed documents are judged, before
//! any of its work is done: keys documents first (who speaks for each
//! publisher), then each publisher's catalog metadata with its own keys, the
//! keys and levels the accepted metadata revokes (a publisher's own only), and
//! the revocation statements.

use std::collections::BTreeMap;
use std::path::Path;

use hotpatch_format::SignedDocument;

use super::{CatalogStatus, Catalogs, Keys, metadata, publishers, revocation, revoked_keys};
use crate::protocol::{Answer, TargetReport};
use crate::state::StateError;

/// What the machine made of the signed documents an answer carried.
pub struct Guarded {
    /// All publishers' catalogs as one status (the single one's when one).
    pub status: CatalogStatus,
    /// Each publisher's catalog status.
    pub statuses: Vec<CatalogStatus>,
    pub catalog: Catalogs,
    /// Stale or refused metadata, refused statements, targets behind the catalog.
    pub notes: Vec<String>,
    /// The machine's keys, rotated and less those revoked: what packages are verified with.
    pub keys: Keys,
}

/// The publishers of the trust directory's keys, moved along their recorded
/// keys documents, less every key revoked: what a package is verified with.
pub fn machine_keys(state_dir: &Path, keys: &Keys) -> Result<Keys, StateError> {
    let revoked = revoked_keys::load(state_dir)?;
    let publishers = publishers::load(state_dir, &keys.publishers)?.without(&revoked);
    Ok(revoked_keys::effective(&Keys { publishers: publishers.trust(), operations: keys.operations.clone() }, &revoked))
}

/// Judges the answer's keys documents, catalog metadata and revocation
/// statements against the machine's own keys and records what they establish
/// (durably) before any work of the answer is done.
pub fn guard_answer(
    state_dir: &Path,
    answer: &Answer,
    targets: &[TargetReport],
    keys: &Keys,
) -> Result<Guarded, StateError> {
    let mut publishers = publishers::load(state_dir, &keys.publishers)?;
    let mut notes = publishers::receive(state_dir, &mut publishers, &answer.keys)?;
    let mut revoked = revoked_keys::load(state_dir)?;
    let received = metadata::receive(
        state_dir,
        &catalog_documents(answer),
        &publishers.without(&revoked),
        jiff::Timestamp::now(),
    )?;
    for (anchor, c) in &received.accepted {
        let own: Vec<String> = c.metadata.revoked_keys.iter().filter(|k| publishers.owns(anchor, k)).cloned().collect();
        if own.len() != c.metadata.revoked_keys.len() {
            notes.push(format!("publisher {anchor}'s catalog metadata revokes keys of another publisher; ignored"));
        }
        revoked = revoked_keys::record(state_dir, &own)?;
    }
    let publishers = publishers.without(&revoked);
    let keys = revoked_keys::effective(
        &Keys { publishers: publishers.trust(), operations: keys.operations.clone() },
        &revoked,
    );
    let mut floor = super::Floor::load(state_dir)?;
    notes.extend(received.statuses.iter().filter_map(CatalogStatus::describe));
    notes.extend(revocation::record(&mut floor, &answer.revocations, &received.accepted, &keys, &publishers)?);
    for c in received.accepted.values() {
        notes.extend(metadata::behind(c, targets));
    }
    for n in &notes {
        tracing::warn!(note = %n, "signed catalog");
    }
    let catalog = Catalogs { accepted: received.accepted, publishers };
    Ok(Guarded { status: received.status, statuses: received.statuses, catalog, notes, keys })
}

/// The answer's catalog metadata: each publisher's, and the one an older
/// server sends alone, once each.
fn catalog_documents(answer: &Answer) -> Vec<SignedDocument> {
    let mut by_hash: BTreeMap<String, SignedDocument> = BTreeMap::new();
    for doc in answer.catalog.as_deref().into_iter().chain(&answer.catalogs) {
        by_hash.entry(doc.sha256()).or_insert_with(|| doc.clone());
    }
    by_hash.into_values().collect()
}
