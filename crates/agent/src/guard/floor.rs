//! The no-downgrade record: per build-id, every level this machine verified
//! and every level a signed statement revoked. The floor of a target is its
//! highest verified level that is not revoked; nothing below it, and no revoked
//! level, is applied again. A rollback does not lower the floor: only a signed
//! revocation of the levels above does.
//!
//! With several publishers, a publisher's revocation reaches only packages
//! signed by its own keys: each level records the key that signed it, and a
//! publisher's revocation the keys it holds (current and retired). An
//! operations key's revocation (or one recorded before publishers were told
//! apart) reaches every package of the level.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{self, StateError};

const FILE: &str = "levels.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Levels {
    verified: BTreeSet<u32>,
    /// Revoked for every signer (operations key).
    revoked: BTreeSet<u32>,
    /// The key id that signed the first verified package of each level.
    #[serde(default)]
    signers: BTreeMap<u32, String>,
    /// Revoked by a publisher: only for packages signed by these key ids.
    #[serde(default)]
    revoked_for: BTreeMap<u32, BTreeSet<String>>,
}

impl Levels {
    fn floor(&self) -> u32 {
        self.verified.iter().rev().find(|l| !self.is_revoked(**l)).copied().unwrap_or(0)
    }

    /// A level verified before signers were recorded counts as any publisher's.
    fn is_revoked(&self, level: u32) -> bool {
        match self.signers.get(&level) {
            Some(signer) => self.revoked_for_signer(level, signer),
            None => self.revoked.contains(&level) || self.revoked_for.contains_key(&level),
        }
    }

    fn revoked_for_signer(&self, level: u32, signer: &str) -> bool {
        self.revoked.contains(&level) || self.revoked_for.get(&level).is_some_and(|keys| keys.contains(signer))
    }
}

/// Who revoked a level: the organisation's operations key reaches every
/// package of it, a publisher only the packages its keys signed.
#[derive(Debug, Clone, Copy)]
pub enum Revoker<'a> {
    Operations,
    Publisher { keys: &'a BTreeSet<String> },
}

/// Why a verified package is not applied here.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FloorRefusal {
    #[error(
        "level {level} of {build_id} is below level {floor}, already verified on this machine; not applied (a lower level needs a signed revocation of the higher ones)"
    )]
    Downgrade { build_id: String, level: u32, floor: u32 },
    #[error("level {level} of {build_id} was revoked by a signed statement; not applied")]
    Revoked { build_id: String, level: u32 },
}

/// The record as loaded from the state directory; each change is written
/// through (fsync'd) before it is acted on.
#[derive(Debug)]
pub struct Floor {
    dir: PathBuf,
    targets: BTreeMap<String, Levels>,
}

impl Floor {
    pub fn load(dir: &Path) -> Result<Floor, StateError> {
        let targets = state::read_json(&dir.join(FILE))?.unwrap_or_default();
        Ok(Floor { dir: dir.to_path_buf(), targets })
    }

    /// The lowest level of `build_id` this machine still accepts (0: any).
    pub fn floor(&self, build_id: &str) -> u32 {
        self.targets.get(build_id).map_or(0, Levels::floor)
    }

    /// Whether the level, as verified here, is revoked by whoever may revoke it.
    pub fn is_revoked(&self, build_id: &str, level: u32) -> bool {
        self.targets.get(build_id).is_some_and(|l| l.is_revoked(level))
    }

    /// Whether a package of `level` signed by `signer` (key id) may be applied.
    pub fn check(&self, build_id: &str, level: u32, signer: &str) -> Result<(), FloorRefusal> {
        if self.targets.get(build_id).is_some_and(|l| l.revoked_for_signer(level, signer)) {
            return Err(FloorRefusal::Revoked { build_id: build_id.into(), level });
        }
        let floor = self.floor(build_id);
        if level < floor {
            return Err(FloorRefusal::Downgrade { build_id: build_id.into(), level, floor });
        }
        Ok(())
    }

    /// Records a level whose package verified (signed by key `signer`), before it is applied.
    pub fn record_verified(&mut self, build_id: &str, level: u32, signer: &str) -> Result<(), StateError> {
        if self.targets.get(build_id).is_some_and(|l| l.verified.contains(&level)) {
            return Ok(());
        }
        let entry = self.targets.entry(build_id.to_string()).or_default();
        entry.verified.insert(level);
        entry.signers.insert(level, signer.to_string());
        self.save()
    }

    /// Records levels a verified statement revoked; returns whether anything was new.
    pub fn record_revoked(&mut self, build_id: &str, levels: &[u32], by: Revoker<'_>) -> Result<bool, StateError> {
        let entry = self.targets.entry(build_id.to_string()).or_default();
        let mut changed = false;
        for level in levels {
            changed |= match by {
                Revoker::Operations => entry.revoked.insert(*level),
                Revoker::Publisher { keys } => {
                    let set = entry.revoked_for.entry(*level).or_default();
                    let before = set.len();
                    set.extend(keys.iter().cloned());
                    set.len() != before
                }
            };
        }
        if !changed {
            return Ok(false);
        }
        self.save().map(|()| true)
    }

    fn save(&self) -> Result<(), StateError> {
        state::write_durable(&self.dir, FILE, &self.targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_holds_across_loads_and_moves_down_only_by_revocation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = Floor::load(dir.path()).expect("load");
        assert_eq!(f.check("aa", 1, "k"), Ok(()));
        f.record_verified("aa", 1, "k").expect("record");
        f.record_verified("aa", 2, "k").expect("record");
        let f = Floor::load(dir.path()).expect("reload");
        assert_eq!(f.floor("aa"), 2);
        assert!(matches!(f.check("aa", 1, "k"), Err(FloorRefusal::Downgrade { floor: 2, .. })));
        assert_eq!(f.check("aa", 3, "k"), Ok(()));
        assert_eq!(f.floor("bb"), 0);

        let mut f = Floor::load(dir.path()).expect("reload");
        assert!(f.record_revoked("aa", &[2], Revoker::Operations).expect("revoke"));
        assert!(!f.record_revoked("aa", &[2], Revoker::Operations).expect("again"));
        let f = Floor::load(dir.path()).expect("reload");
        assert_eq!(f.floor("aa"), 1);
        assert_eq!(f.check("aa", 1, "k"), Ok(()));
        assert!(matches!(f.check("aa", 2, "k"), Err(FloorRefusal::Revoked { level: 2, .. })));
    }

    #[test]
    fn a_publisher_revokes_only_levels_its_own_keys_signed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = Floor::load(dir.path()).expect("load");
        f.record_verified("aa", 1, "a-key").expect("record");
        f.record_verified("aa", 2, "a-key").expect("record");
        let b_keys: BTreeSet<String> = ["b-key".to_string()].into();
        assert!(f.record_revoked("aa", &[2], Revoker::Publisher { keys: &b_keys }).expect("revoke"));
        let f = Floor::load(dir.path()).expect("reload");
        assert!(!f.is_revoked("aa", 2), "b cannot revoke a's level");
        assert_eq!(f.floor("aa"), 2);
        // b's own package of that level is refused, a's is not.
        assert!(matches!(f.check("aa", 2, "b-key"), Err(FloorRefusal::Revoked { .. })));
        assert_eq!(f.check("aa", 2, "a-key"), Ok(()));

        let mut f = Floor::load(dir.path()).expect("reload");
        let a_keys: BTreeSet<String> = ["a-key".to_string()].into();
        f.record_revoked("aa", &[2], Revoker::Publisher { keys: &a_keys }).expect("revoke");
        assert!(f.is_revoked("aa", 2));
        assert_eq!(f.floor("aa"), 1);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_it_not_an_empty_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), b"{\"aa\": 3}").expect("write");
        let e = Floor::load(dir.path()).expect_err("corrupt");
        assert!(e.to_string().contains("levels.json"), "{e}");
    }
}
