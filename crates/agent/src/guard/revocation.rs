//! Revocations and the rollbacks they allow. A server may list a rollback; the
//! machine carries it out only when the level running was revoked by a
//! statement signed by a publisher or by the organisation's operations key (or
//! by the accepted catalog metadata). A publisher's revocation reaches only
//! packages its own keys signed; the operations key's reaches every package.
//! A local root operator's `hotpatch rollback` does not pass through here.

use std::collections::{BTreeMap, BTreeSet};

use hotpatch_format::{Publishers, SignedDocument, VerifiedCatalog};

use super::floor::Revoker;
use super::{Floor, Keys};
use crate::state::StateError;

/// Records every revocation that verifies: the statements the server passed
/// on and each publisher's accepted catalog metadata. Returns why any
/// statement was refused (an unsigned or foreign one changes nothing).
pub fn record(
    floor: &mut Floor,
    statements: &[SignedDocument],
    catalogs: &BTreeMap<String, VerifiedCatalog>,
    keys: &Keys,
    publishers: &Publishers,
) -> Result<Vec<String>, StateError> {
    let mut problems = Vec::new();
    for doc in statements {
        let (verified, by) = match hotpatch_format::verify_revocation(doc, &keys.operations) {
            Ok(v) => (Ok(v), None),
            Err(_) => {
                (hotpatch_format::verify_revocation(doc, &publishers.trust()), publishers.publisher_of(&doc.key_id))
            }
        };
        match verified {
            Ok((r, key_id)) => {
                let owned = by.map(|anchor| owned_keys(publishers, anchor));
                let revoker = owned.as_ref().map_or(Revoker::Operations, |keys| Revoker::Publisher { keys });
                if floor.record_revoked(&r.build_id, &r.levels, revoker)? {
                    tracing::warn!(build_id = %r.build_id, levels = ?r.levels, key = %key_id, reason = %r.reason, "levels revoked by a signed statement");
                }
            }
            Err(e) => problems.push(format!("revocation statement refused: {e}")),
        }
    }
    for (anchor, catalog) in catalogs {
        let keys = owned_keys(publishers, anchor);
        for r in &catalog.metadata.revoked {
            floor.record_revoked(&r.build_id, &r.levels, Revoker::Publisher { keys: &keys })?;
        }
    }
    Ok(problems)
}

/// Every key of a publisher, current and retired: a revocation by it reaches
/// packages any of them signed.
pub fn owned_keys(publishers: &Publishers, anchor: &str) -> BTreeSet<String> {
    publishers.get(anchor).map(|p| p.keys.key_ids().chain(p.retired.iter().cloned()).collect()).unwrap_or_default()
}

/// Allows a server-listed rollback of `patch_id` only when each level of it
/// running here is revoked.
pub fn authorize_rollback(floor: &Floor, patch_id: &str, build_id: &str, running: &[u32]) -> Result<(), String> {
    let unrevoked: Vec<String> =
        running.iter().filter(|l| !floor.is_revoked(build_id, **l)).map(u32::to_string).collect();
    if unrevoked.is_empty() {
        return Ok(());
    }
    Err(format!(
        "rollback of {patch_id} refused: level {} of {build_id} is not revoked by a statement signed by its publisher or an operations key (hotpatch catalog revoke); a local operator can still run hotpatch rollback",
        unrevoked.join(", ")
    ))
}
