//! What the machine holds against its own control plane: a server (or anyone
//! in the path of its connection) decides what is offered, never what is
//! acceptable. Three records in the state directory, each fsync'd:
//!
//! - `floor`: per build-id, the levels ever verified and the levels revoked by
//!   a signed statement; a level below the highest verified one that is not
//!   revoked is never applied, across restarts of processes and of the agent.
//! - `publishers`: each trusted key anchors a publisher; the keys documents
//!   followed (rotation) say which keys speak for it now.
//! - `metadata`: each publisher's signed catalog metadata last accepted: its
//!   version only grows, and once it expires that catalog is reported stale.
//! - `revocation`: a rollback the server lists is carried out only when a
//!   publisher or the organisation's operations key signed the revocation of
//!   the level running.
//! - `revoked_keys`: publisher keys the accepted metadata revoked, trusted for
//!   nothing from then on.

mod answer;
pub mod floor;
pub mod metadata;
pub mod publishers;
pub mod revocation;
pub mod revoked_keys;

pub use answer::{Guarded, guard_answer, machine_keys};
pub use floor::{Floor, FloorRefusal};
pub use metadata::{CatalogStatus, Catalogs, MetadataOutcome};
pub use revocation::authorize_rollback;

use hotpatch_format::TrustStore;

/// The keys a machine checks signed statements with: publishers sign packages,
/// catalog metadata and revocations; the organisation's operations keys
/// (kept off the server) sign revocations only.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub publishers: TrustStore,
    pub operations: TrustStore,
}

impl Keys {
    pub fn publishers_only(publishers: TrustStore) -> Keys {
        Keys { publishers, operations: TrustStore::default() }
    }

    /// Publishers and operations keys together: whoever may sign a revocation.
    pub fn revokers(&self) -> TrustStore {
        let all = self.publishers.keys().chain(self.operations.keys()).cloned();
        TrustStore::from_keys(all.collect::<Vec<_>>())
    }
}
