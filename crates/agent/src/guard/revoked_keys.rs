//! Publisher keys revoked by accepted catalog metadata. Once a key is named
//! there, this machine trusts nothing it signs (packages, metadata,
//! revocations), whatever its trust directory holds: a lost key is retired
//! across the fleet by the next metadata, without touching every machine.
//! The record only grows.

use std::collections::BTreeSet;
use std::path::Path;

use hotpatch_format::TrustStore;

use super::Keys;
use crate::state::{self, StateError};

const FILE: &str = "revoked-keys.json";

pub fn load(dir: &Path) -> Result<BTreeSet<String>, StateError> {
    Ok(state::read_json(&dir.join(FILE))?.unwrap_or_default())
}

/// Adds `ids` to the record (fsync'd); returns the whole set.
pub fn record(dir: &Path, ids: &[String]) -> Result<BTreeSet<String>, StateError> {
    let mut all = load(dir)?;
    let before = all.len();
    all.extend(ids.iter().cloned());
    if all.len() != before {
        tracing::warn!(keys = ?ids, "publisher keys revoked by the catalog metadata");
        state::write_durable(dir, FILE, &all)?;
    }
    Ok(all)
}

fn without(store: &TrustStore, revoked: &BTreeSet<String>) -> TrustStore {
    TrustStore::from_keys(store.keys().filter(|k| !revoked.contains(&k.id_hex())).cloned().collect::<Vec<_>>())
}

/// The keys with every revoked one taken out.
pub fn effective(keys: &Keys, revoked: &BTreeSet<String>) -> Keys {
    Keys { publishers: without(&keys.publishers, revoked), operations: without(&keys.operations, revoked) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotpatch_format::SecretKey;

    #[test]
    fn a_revoked_key_is_trusted_for_nothing_after_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (SecretKey::from_seed([1; 32]).public(), SecretKey::from_seed([2; 32]).public());
        let keys = Keys {
            publishers: TrustStore::from_keys([a.clone(), b.clone()]),
            operations: TrustStore::from_keys([b.clone()]),
        };
        record(dir.path(), &[b.id_hex()]).expect("record");
        let e = effective(&keys, &load(dir.path()).expect("load"));
        assert_eq!((e.publishers.len(), e.operations.len()), (1, 0));
        assert!(e.publishers.get(&a.id()).is_some() && e.publishers.get(&b.id()).is_none());
    }
}
