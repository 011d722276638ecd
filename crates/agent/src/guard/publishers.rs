//! Publishers' keys as this machine follows them: each key of the trust
//! directory anchors a publisher, and the keys documents the server passes on
//! (signed by the publisher's current key) move it to new keys. The chain of
//! documents followed is kept in the state directory (fsync'd) and followed
//! again at each load, so a rotation holds across restarts, and a document
//! older than the last followed (a replay) is refused.

use std::collections::BTreeMap;
use std::path::Path;

use hotpatch_format::{Followed, KeysMetadata, Publishers, SignedDocument, TrustStore};

use crate::state::{self, StateError};

const FILE: &str = "publisher-keys.json";

/// The chain of keys documents followed, per publisher anchor, in version order.
type Chains = BTreeMap<String, Vec<SignedDocument>>;

/// The publishers anchored in `anchors` with every recorded keys document followed.
pub fn load(dir: &Path, anchors: &TrustStore) -> Result<Publishers, StateError> {
    let chains: Chains = state::read_json(&dir.join(FILE))?.unwrap_or_default();
    let mut publishers = Publishers::from_anchors(anchors);
    for (anchor, docs) in &chains {
        if publishers.get(anchor).is_none() {
            // Its anchor left the trust directory: root stopped trusting it.
            continue;
        }
        for doc in docs {
            if let Err(e) = publishers.follow(doc) {
                tracing::error!(publisher = %anchor, error = %e, "recorded keys document not followed");
                break;
            }
        }
    }
    Ok(publishers)
}

/// Follows the keys documents of an answer (each publisher's in version
/// order) and records each one followed before it is relied on. Returns why
/// any document was refused.
pub fn receive(dir: &Path, publishers: &mut Publishers, docs: &[SignedDocument]) -> Result<Vec<String>, StateError> {
    let mut ordered: Vec<(u64, &SignedDocument)> = Vec::new();
    let mut problems = Vec::new();
    for doc in docs {
        match serde_json::from_str::<KeysMetadata>(&doc.signed) {
            Ok(m) => ordered.push((m.version, doc)),
            Err(e) => problems.push(format!("keys document refused: malformed: {e}")),
        }
    }
    ordered.sort_by_key(|(version, _)| *version);
    let mut chains: Option<Chains> = None;
    for (_, doc) in ordered {
        match publishers.follow(doc) {
            Ok(Followed::Known) => {}
            Ok(Followed::Rotated { anchor, version, retired }) => {
                tracing::warn!(publisher = %anchor, version, retired = ?retired, "publisher keys rotated");
                let all = match chains.as_mut() {
                    Some(c) => c,
                    None => chains.insert(state::read_json(&dir.join(FILE))?.unwrap_or_default()),
                };
                all.entry(anchor).or_default().push(doc.clone());
                state::write_durable(dir, FILE, &*all)?;
            }
            Err(e) => problems.push(format!("keys document refused: {e}")),
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotpatch_format::SecretKey;

    fn keys_doc(anchor: &SecretKey, version: u64, keys: &[&SecretKey], signer: &SecretKey) -> SignedDocument {
        KeysMetadata {
            publisher: anchor.public().id_hex(),
            version,
            issued: "2026-12-01T00:00:00Z".into(),
            keys: keys.iter().map(|k| k.public().to_text().trim().to_string()).collect(),
        }
        .sign(signer)
        .expect("sign")
    }

    #[test]
    fn a_rotation_holds_across_loads_and_an_old_document_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (old, new, newer) =
            (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]), SecretKey::from_seed([3; 32]));
        let anchors = TrustStore::from_keys([old.public()]);
        let (v1, v2) = (keys_doc(&old, 1, &[&new], &old), keys_doc(&old, 2, &[&newer], &new));
        let mut p = load(dir.path(), &anchors).expect("load");
        // Out of order in the answer: followed in version order.
        let problems = receive(dir.path(), &mut p, &[v2.clone(), v1.clone()]).expect("receive");
        assert!(problems.is_empty(), "{problems:?}");

        let mut p = load(dir.path(), &anchors).expect("reload");
        let trust = p.trust();
        assert!(trust.get(&newer.public().id()).is_some() && trust.len() == 1, "only the newest key");
        let problems = receive(dir.path(), &mut p, std::slice::from_ref(&v1)).expect("replay");
        assert!(problems.iter().any(|p| p.contains("replayed")), "{problems:?}");
        assert!(receive(dir.path(), &mut p, &[v2]).expect("known").is_empty());
        // The anchor gone from the trust directory: its chain counts no more.
        let other = TrustStore::from_keys([SecretKey::from_seed([4; 32]).public()]);
        assert!(load(dir.path(), &other).expect("load").trust().get(&newer.public().id()).is_none());
    }
}
