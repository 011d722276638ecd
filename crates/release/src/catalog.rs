//! The catalog's view of one product, as the offer needs it: the baselines that
//! were released (with real dates), and the hotpatches published for each
//! baseline build-id.
//!
//! Entries dated after "today" are allowed (the server may know of scheduled
//! releases); the offer simply ignores them until their day.

use crate::classification::Classification;
use crate::ids::{BaselineId, BuildId, CveId, PatchId, ProductName};
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Whether a baseline came on the cadence or outside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BaselineKind {
    Planned,
    /// Released outside the cadence; `reason` says why (e.g. "zero-day in the TLS
    /// parser that cannot be hotpatched").
    Unplanned {
        reason: String,
    },
}

/// One released (or scheduled) baseline of the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogBaseline {
    pub id: BaselineId,
    pub build_id: BuildId,
    pub release_date: Date,
    pub kind: BaselineKind,
}

/// One published update for one baseline build-id.
///
/// `classification` and `cves` describe the fixes this level adds over the level
/// below it; because levels are cumulative, level n delivers the fixes of all
/// levels 1..=n. A level whose classification is not hotpatchable is published so
/// that the offer knows a fix exists that only a baseline can bring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogHotpatch {
    pub baseline_build_id: BuildId,
    pub patch_id: PatchId,
    pub level: u32,
    pub classification: Classification,
    #[serde(default)]
    pub cves: Vec<CveId>,
    pub release_date: Date,
}

/// Everything the catalog knows about one product's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductCatalog {
    pub product: ProductName,
    pub baselines: Vec<CatalogBaseline>,
    #[serde(default)]
    pub hotpatches: Vec<CatalogHotpatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog lists baseline {0} twice")]
    DuplicateBaselineId(BaselineId),
    #[error("catalog lists build-id {build_id} for both baseline {first} and {second}")]
    DuplicateBuildId { build_id: BuildId, first: BaselineId, second: BaselineId },
    #[error("baselines {first} and {second} share the release date {date}; baselines must be ordered by date")]
    SameReleaseDate { first: BaselineId, second: BaselineId, date: Date },
    #[error("unplanned baseline {0} has no reason")]
    EmptyUnplannedReason(BaselineId),
    #[error("hotpatch {0} has level 0; levels start at 1")]
    LevelZero(PatchId),
    #[error("hotpatches {first} and {second} both claim level {level} of build-id {build_id}")]
    DuplicateLevel { build_id: BuildId, level: u32, first: PatchId, second: PatchId },
    #[error("catalog lists hotpatch {0} twice")]
    DuplicatePatchId(PatchId),
    #[error("hotpatch {patch} is for build-id {build_id}, which no baseline in the catalog has")]
    UnknownBaseline { patch: PatchId, build_id: BuildId },
}

impl ProductCatalog {
    /// Checks the catalog is consistent: unique baselines, build-ids and release
    /// dates; unique hotpatch ids and levels per build-id; every hotpatch belongs
    /// to a listed baseline.
    pub fn validate(&self) -> Result<(), CatalogError> {
        let mut ids = HashSet::new();
        let mut builds: HashMap<&BuildId, &BaselineId> = HashMap::new();
        let mut dates: HashMap<Date, &BaselineId> = HashMap::new();
        for b in &self.baselines {
            if !ids.insert(&b.id) {
                return Err(CatalogError::DuplicateBaselineId(b.id.clone()));
            }
            if let Some(first) = builds.insert(&b.build_id, &b.id) {
                return Err(CatalogError::DuplicateBuildId {
                    build_id: b.build_id.clone(),
                    first: first.clone(),
                    second: b.id.clone(),
                });
            }
            if let Some(first) = dates.insert(b.release_date, &b.id) {
                return Err(CatalogError::SameReleaseDate {
                    first: first.clone(),
                    second: b.id.clone(),
                    date: b.release_date,
                });
            }
            if matches!(&b.kind, BaselineKind::Unplanned { reason } if reason.trim().is_empty()) {
                return Err(CatalogError::EmptyUnplannedReason(b.id.clone()));
            }
        }
        let mut patch_ids = HashSet::new();
        let mut levels: HashMap<(&BuildId, u32), &PatchId> = HashMap::new();
        for h in &self.hotpatches {
            if h.level == 0 {
                return Err(CatalogError::LevelZero(h.patch_id.clone()));
            }
            if !patch_ids.insert(&h.patch_id) {
                return Err(CatalogError::DuplicatePatchId(h.patch_id.clone()));
            }
            if !builds.contains_key(&h.baseline_build_id) {
                return Err(CatalogError::UnknownBaseline {
                    patch: h.patch_id.clone(),
                    build_id: h.baseline_build_id.clone(),
                });
            }
            if let Some(first) = levels.insert((&h.baseline_build_id, h.level), &h.patch_id) {
                return Err(CatalogError::DuplicateLevel {
                    build_id: h.baseline_build_id.clone(),
                    level: h.level,
                    first: first.clone(),
                    second: h.patch_id.clone(),
                });
            }
        }
        Ok(())
    }

    /// The baseline with this build-id.
    pub fn baseline(&self, build_id: &BuildId) -> Option<&CatalogBaseline> {
        self.baselines.iter().find(|b| &b.build_id == build_id)
    }
}
