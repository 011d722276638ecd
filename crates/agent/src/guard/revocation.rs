//! Revocations and the rollbacks they allow. A server may list a rollback; the
//! machine carries it out only when the level running was revoked by a
//! statement signed by a publisher or by the organisation's operations key (or
//! by the accepted catalog metadata). A local root operator's `hotpatch
//! rollback` does not pass through here.

use hotpatch_format::{SignedDocument, VerifiedCatalog};

use super::{Floor, Keys};
use crate::state::StateError;

/// Records every revocation that verifies: the statements the server passed
/// on and the accepted catalog metadata's list. Returns why any statement was
/// refused (an unsigned or foreign one changes nothing).
pub fn record(
    floor: &mut Floor,
    statements: &[SignedDocument],
    catalog: Option<&VerifiedCatalog>,
    keys: &Keys,
) -> Result<Vec<String>, StateError> {
    let mut problems = Vec::new();
    let revokers = keys.revokers();
    for doc in statements {
        match hotpatch_format::verify_revocation(doc, &revokers) {
            Ok((r, key_id)) => {
                if floor.record_revoked(&r.build_id, &r.levels)? {
                    tracing::warn!(build_id = %r.build_id, levels = ?r.levels, key = %key_id, reason = %r.reason, "levels revoked by a signed statement");
                }
            }
            Err(e) => problems.push(format!("revocation statement refused: {e}")),
        }
    }
    for r in catalog.map(|c| c.metadata.revoked.as_slice()).unwrap_or_default() {
        floor.record_revoked(&r.build_id, &r.levels)?;
    }
    Ok(problems)
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
        "rollback of {patch_id} refused: level {} of {build_id} is not revoked by a statement signed by a publisher or operations key (hotpatch catalog revoke); a local operator can still run hotpatch rollback",
        unrevoked.join(", ")
    ))
}
