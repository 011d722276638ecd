//! The no-downgrade record: per build-id, every level this machine verified
//! and every level a signed statement revoked. The floor of a target is its
//! highest verified level that is not revoked; nothing below it, and no revoked
//! level, is applied again. A rollback does not lower the floor: only a signed
//! revocation of the levels above does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{self, StateError};

const FILE: &str = "levels.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Levels {
    verified: BTreeSet<u32>,
    revoked: BTreeSet<u32>,
}

impl Levels {
    fn floor(&self) -> u32 {
        self.verified.iter().rev().find(|l| !self.revoked.contains(l)).copied().unwrap_or(0)
    }
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

    pub fn is_revoked(&self, build_id: &str, level: u32) -> bool {
        self.targets.get(build_id).is_some_and(|l| l.revoked.contains(&level))
    }

    pub fn check(&self, build_id: &str, level: u32) -> Result<(), FloorRefusal> {
        if self.is_revoked(build_id, level) {
            return Err(FloorRefusal::Revoked { build_id: build_id.into(), level });
        }
        let floor = self.floor(build_id);
        if level < floor {
            return Err(FloorRefusal::Downgrade { build_id: build_id.into(), level, floor });
        }
        Ok(())
    }

    /// Records a level whose package verified, before it is applied.
    pub fn record_verified(&mut self, build_id: &str, level: u32) -> Result<(), StateError> {
        if self.targets.get(build_id).is_some_and(|l| l.verified.contains(&level)) {
            return Ok(());
        }
        self.targets.entry(build_id.to_string()).or_default().verified.insert(level);
        self.save()
    }

    /// Records levels a verified statement revoked; returns whether anything was new.
    pub fn record_revoked(&mut self, build_id: &str, levels: &[u32]) -> Result<bool, StateError> {
        let entry = self.targets.entry(build_id.to_string()).or_default();
        let before = entry.revoked.len();
        entry.revoked.extend(levels.iter().copied());
        if entry.revoked.len() == before {
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
        assert_eq!(f.check("aa", 1), Ok(()));
        f.record_verified("aa", 1).expect("record");
        f.record_verified("aa", 2).expect("record");
        let f = Floor::load(dir.path()).expect("reload");
        assert_eq!(f.floor("aa"), 2);
        assert!(matches!(f.check("aa", 1), Err(FloorRefusal::Downgrade { floor: 2, .. })));
        assert_eq!(f.check("aa", 3), Ok(()));
        assert_eq!(f.floor("bb"), 0);

        let mut f = Floor::load(dir.path()).expect("reload");
        assert!(f.record_revoked("aa", &[2]).expect("revoke"));
        assert!(!f.record_revoked("aa", &[2]).expect("again"));
        let f = Floor::load(dir.path()).expect("reload");
        assert_eq!(f.floor("aa"), 1);
        assert_eq!(f.check("aa", 1), Ok(()));
        assert!(matches!(f.check("aa", 2), Err(FloorRefusal::Revoked { level: 2, .. })));
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_it_not_an_empty_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), b"{\"aa\": 3}").expect("write");
        let e = Floor::load(dir.path()).expect_err("corrupt");
        assert!(e.to_string().contains("levels.json"), "{e}");
    }
}
