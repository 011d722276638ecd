//! The offer for one target on one machine: up to date, a hotpatch (no restart),
//! or a baseline (restart required), each with a reason in words.
//!
//! [`decide`] is a pure function of an [`OfferInput`]; the agent and the server
//! call it with the same input and get the same answer. The rules, in the order
//! they are applied, are listed in the crate documentation.

use crate::catalog::{BaselineKind, CatalogBaseline, CatalogError, CatalogHotpatch, ProductCatalog};
use crate::coverage::{MAX_GRACE_DAYS, coverage_end};
use crate::ids::{BaselineId, BuildId, CveId, PatchId, ProductName};
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The baseline of the target installed and running on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunningBaseline {
    pub product: ProductName,
    pub baseline: BaselineId,
    pub build_id: BuildId,
    pub release_date: Date,
}

/// Everything the decision needs, and nothing it has to look up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferInput {
    pub running: RunningBaseline,
    /// The highest hotpatch level applied to the target's processes; `None` when
    /// no hotpatch is applied.
    #[serde(default)]
    pub applied_level: Option<u32>,
    pub catalog: ProductCatalog,
    /// The organisation has an active subscription or trial.
    pub entitled: bool,
    /// The caller's "today"; the decision never reads a clock.
    pub today: Date,
    /// Days hotpatches stay offered after a planned successor is out; pass the
    /// calendar's [`crate::ReleaseCalendar::grace_days`].
    #[serde(default)]
    pub grace_days: u16,
}

/// What the machine should do for this target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Offer {
    UpToDate {
        reason: String,
    },
    /// Apply this level; it replaces any lower level in one transition.
    Hotpatch {
        level: u32,
        patch_id: PatchId,
        /// Every CVE fixed by the levels above the applied one up to `level`.
        cves: Vec<CveId>,
        reason: String,
    },
    /// Install this baseline and restart (reboot, for a system component).
    Baseline {
        baseline: BaselineId,
        reason: String,
        restart_required: bool,
    },
}

/// The offer's variant without its data, for tables and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfferKind {
    UpToDate,
    Hotpatch,
    Baseline,
}

impl Offer {
    pub fn kind(&self) -> OfferKind {
        match self {
            Offer::UpToDate { .. } => OfferKind::UpToDate,
            Offer::Hotpatch { .. } => OfferKind::Hotpatch,
            Offer::Baseline { .. } => OfferKind::Baseline,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Offer::UpToDate { reason } | Offer::Hotpatch { reason, .. } | Offer::Baseline { reason, .. } => reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("invalid catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("machine runs product {running} but the catalog is for {catalog}")]
    ProductMismatch { running: ProductName, catalog: ProductName },
    #[error("running baseline {baseline} (build-id {build_id}) is not in the catalog")]
    UnknownBaseline { baseline: BaselineId, build_id: BuildId },
    #[error("build-id {build_id} is baseline {catalog} in the catalog, but the machine reports {running}")]
    BaselineMismatch { build_id: BuildId, running: BaselineId, catalog: BaselineId },
    #[error("baseline {baseline} was released on {catalog} per the catalog, but the machine reports {running}")]
    ReleaseDateMismatch { baseline: BaselineId, running: Date, catalog: Date },
    #[error("applied level 0 does not exist; levels start at 1 (send none when nothing is applied)")]
    AppliedLevelZero,
    #[error("grace of {0} days is too long (at most {MAX_GRACE_DAYS})")]
    GraceTooLong(u16),
}

/// Decides the offer. Errors only on inconsistent input, naming what is wrong.
pub fn decide(input: &OfferInput) -> Result<Offer, OfferError> {
    let running = check(input)?;
    let OfferInput { catalog, entitled, today, grace_days, .. } = input;
    let today = *today;
    let current = &running.id;

    let mut newer: Vec<&CatalogBaseline> =
        catalog.baselines.iter().filter(|b| b.release_date > running.release_date && b.release_date <= today).collect();
    newer.sort_by_key(|b| b.release_date);

    // Rule 1: more than one baseline behind.
    if let [.., _, latest] = newer.as_slice() {
        let behind: Vec<&str> = newer.iter().map(|b| b.id.as_str()).collect();
        return Ok(baseline(
            latest,
            format!(
                "machine missed the last baseline: it runs {current}, {} baselines behind ({}); \
                 install baseline {} and restart",
                behind.len(),
                behind.join(", "),
                latest.id
            ),
        ));
    }

    // Rule 2: one baseline behind; it supersedes hotpatches unless coverage runs on.
    let mut covered_by: Option<(&CatalogBaseline, Date)> = None;
    if let Some(next) = newer.first() {
        if let BaselineKind::Unplanned { reason } = &next.kind {
            return Ok(baseline(
                next,
                format!("unplanned baseline {} is out ({reason}); it supersedes hotpatches for {current}", next.id),
            ));
        }
        if !entitled {
            return Ok(baseline(
                next,
                format!("baseline {} is out; not entitled to hotpatches, so install it and restart", next.id),
            ));
        }
        match coverage_end(next.release_date, false, *grace_days) {
            Some(end) if today <= end => covered_by = Some((next, end)),
            Some(end) => {
                return Ok(baseline(
                    next,
                    format!("baseline {} is out; hotpatches for {current} were covered until {end}", next.id),
                ));
            }
            None => {
                return Ok(baseline(next, format!("baseline {} is out", next.id)));
            }
        }
    }
    let grace_note = covered_by
        .map(|(next, end)| {
            format!(
                "; baseline {} is out: {current} is covered until {end}, install it and restart before then",
                next.id
            )
        })
        .unwrap_or_default();

    let applied = input.applied_level.unwrap_or(0);
    let mut pending: Vec<&CatalogHotpatch> = catalog
        .hotpatches
        .iter()
        .filter(|h| h.baseline_build_id == running.build_id)
        .filter(|h| h.level > applied && h.release_date <= today)
        .collect();
    pending.sort_by_key(|h| h.level);
    // Levels are cumulative, so a level that is not hotpatchable blocks every
    // level above it: they all carry its fix.
    let blocker_at = pending.iter().position(|h| !h.classification.hotpatchable());
    let deliverable = &pending[..blocker_at.unwrap_or(pending.len())];
    let blocker = blocker_at.map(|i| pending[i]);

    // Rule 3: no entitlement, no hotpatches.
    if !entitled {
        let what = match pending.last() {
            Some(h) => format!("level {} for {current} is released but needs a subscription", h.level),
            None => format!("no newer baseline than {current} is out"),
        };
        return Ok(Offer::UpToDate { reason: format!("not entitled to hotpatches: {what}") });
    }

    // Rule 4: the highest deliverable level.
    if let Some(best) = deliverable.last() {
        let cves: Vec<CveId> =
            deliverable.iter().flat_map(|h| h.cves.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        let fixes = if cves.is_empty() {
            format!("applies {} fixes", best.classification)
        } else {
            format!("fixes {}", cves.iter().map(CveId::as_str).collect::<Vec<_>>().join(", "))
        };
        let blocked = blocker
            .map(|b| format!("; level {} is classified {} and needs a baseline", b.level, b.classification))
            .unwrap_or_default();
        return Ok(Offer::Hotpatch {
            level: best.level,
            patch_id: best.patch_id.clone(),
            cves,
            reason: format!("hotpatch level {} {fixes} without a restart{blocked}{grace_note}", best.level),
        });
    }

    // Rule 5: the next fix cannot ship as a hotpatch.
    if let Some(b) = blocker {
        let fix = format!(
            "fix {} (level {}) is classified {} and cannot ship as a hotpatch",
            b.patch_id, b.level, b.classification
        );
        return Ok(match covered_by {
            Some((next, _)) => baseline(next, format!("{fix}; install baseline {} and restart", next.id)),
            None => Offer::UpToDate { reason: format!("{fix}; it waits for the next baseline") },
        });
    }

    // Rule 6: nothing newer.
    let at = match input.applied_level {
        Some(level) => format!("at hotpatch level {level}"),
        None => "with no hotpatch applied".to_string(),
    };
    Ok(Offer::UpToDate { reason: format!("up to date: {current} {at}, nothing newer is released{grace_note}") })
}

fn baseline(to: &CatalogBaseline, reason: String) -> Offer {
    Offer::Baseline { baseline: to.id.clone(), reason, restart_required: true }
}

/// Cross-checks the input and returns the catalog's entry for the running baseline.
fn check(input: &OfferInput) -> Result<&CatalogBaseline, OfferError> {
    let OfferInput { running, catalog, .. } = input;
    catalog.validate()?;
    if input.applied_level == Some(0) {
        return Err(OfferError::AppliedLevelZero);
    }
    if input.grace_days > MAX_GRACE_DAYS {
        return Err(OfferError::GraceTooLong(input.grace_days));
    }
    if running.product != catalog.product {
        return Err(OfferError::ProductMismatch { running: running.product.clone(), catalog: catalog.product.clone() });
    }
    let entry = catalog.baseline(&running.build_id).ok_or_else(|| OfferError::UnknownBaseline {
        baseline: running.baseline.clone(),
        build_id: running.build_id.clone(),
    })?;
    if entry.id != running.baseline {
        return Err(OfferError::BaselineMismatch {
            build_id: running.build_id.clone(),
            running: running.baseline.clone(),
            catalog: entry.id.clone(),
        });
    }
    if entry.release_date != running.release_date {
        return Err(OfferError::ReleaseDateMismatch {
            baseline: entry.id.clone(),
            running: running.release_date,
            catalog: entry.release_date,
        });
    }
    Ok(entry)
}
