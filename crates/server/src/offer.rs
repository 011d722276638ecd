//! The release model's offer for one target on one machine, computed by
//! `hotpatch_release::decide` from the server's catalog, so the server and the
//! agent give the same answer for the same facts.
//!
//! The server registers baselines with several targets each; the release model
//! reasons about one target at a time. So for a target file the catalog holds
//! the product's baselines that ship that file (each with its build of it) and
//! the hotpatches for those builds. A file not rebuilt in a later baseline keeps
//! its build-id: it counts from the first baseline that shipped that build.

use hotpatch_release::{
    BaselineId, BaselineKind, BuildId, CatalogBaseline, CatalogHotpatch, Classification, CveId, Offer, OfferInput,
    PatchId, ProductCatalog, ProductName, RunningBaseline, decide,
};

use crate::domain::catalog::{Baseline, Hotpatch};
use crate::domain::coverage::date_of;

/// What an organisation's catalog and subscription say at one moment.
pub struct OfferContext<'a> {
    pub baselines: &'a [Baseline],
    pub hotpatches: &'a [Hotpatch],
    pub entitled: bool,
    pub now: i64,
    /// The organisation's calendar grace.
    pub grace_days: u16,
}

impl OfferContext<'_> {
    /// The offer for a running build, or why none could be made (an
    /// inconsistent catalog); `None` when the build is in no registered baseline.
    pub fn offer(&self, build_id: &str, applied_level: i64) -> Option<Result<Offer, String>> {
        let running = self
            .baselines
            .iter()
            .filter(|b| b.targets.iter().any(|(_, id)| id == build_id))
            .min_by_key(|b| (b.released, b.name.as_str()))?;
        let file_name = running.targets.iter().find(|(_, id)| id == build_id).map(|(f, _)| f.as_str())?;
        Some(self.decide_for_file(running, file_name, build_id, applied_level))
    }

    /// The offer for `build_id` of `file_name`, which baseline `running` shipped.
    fn decide_for_file(
        &self,
        running: &Baseline,
        file_name: &str,
        build_id: &str,
        applied_level: i64,
    ) -> Result<Offer, String> {
        let OfferContext { baselines, hotpatches, entitled, now, grace_days } = *self;
        let today = date_of(now).ok_or("clock out of range")?;
        let product = ProductName::new(running.product.as_str()).map_err(|e| e.to_string())?;
        let mut ordered: Vec<&Baseline> = baselines
            .iter()
            .filter(|b| b.product == running.product && b.targets.iter().any(|(f, _)| f == file_name))
            .collect();
        ordered.sort_by_key(|b| (b.released, b.name.as_str()));
        let mut catalog = ProductCatalog { product: product.clone(), baselines: Vec::new(), hotpatches: Vec::new() };
        for b in ordered {
            let Some((_, build)) = b.targets.iter().find(|(f, _)| f == file_name) else { continue };
            let build = BuildId::new(build.as_str()).map_err(|e| e.to_string())?;
            let date = date_of(b.released).ok_or("baseline release time out of range")?;
            // The first baseline with a build (or on a date) stands for it.
            if catalog.baselines.iter().any(|c| c.build_id == build || c.release_date == date) {
                continue;
            }
            let kind = if b.planned {
                BaselineKind::Planned
            } else {
                BaselineKind::Unplanned {
                    reason: if b.reason.trim().is_empty() { "unplanned".into() } else { b.reason.clone() },
                }
            };
            catalog.baselines.push(CatalogBaseline {
                id: BaselineId::new(b.name.as_str()).map_err(|e| e.to_string())?,
                build_id: build,
                release_date: date,
                kind,
            });
        }
        for h in hotpatches {
            let Ok(build) = BuildId::new(h.build_id.as_str()) else { continue };
            if !catalog.baselines.iter().any(|b| b.build_id == build) {
                continue;
            }
            let level = u32::try_from(h.level).map_err(|_| format!("hotpatch {} has level {}", h.patch_id, h.level))?;
            // A hotpatch counts from the day it reached the catalog; a manifest dated
            // in the future does not hide an uploaded fix.
            let created = crate::util::parse_time(&h.created).and_then(date_of).unwrap_or(today).min(today);
            catalog.hotpatches.push(CatalogHotpatch {
                baseline_build_id: build,
                patch_id: PatchId::new(h.patch_id.as_str()).map_err(|e| e.to_string())?,
                level,
                classification: h.classification.parse::<Classification>().map_err(|e| e.to_string())?,
                cves: h.cves.iter().filter_map(|c| CveId::new(c.as_str()).ok()).collect(),
                release_date: created,
            });
        }
        let running_entry = catalog
            .baselines
            .iter()
            .find(|b| b.build_id.as_str() == build_id.to_ascii_lowercase())
            .ok_or_else(|| format!("build {build_id} is not in the catalog of {file_name}"))?;
        let input = OfferInput {
            running: RunningBaseline {
                product,
                baseline: running_entry.id.clone(),
                build_id: running_entry.build_id.clone(),
                release_date: running_entry.release_date,
            },
            applied_level: u32::try_from(applied_level).ok().filter(|&l| l > 0),
            catalog,
            entitled,
            today,
            grace_days,
        };
        decide(&input).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::parse_time;

    fn baseline(name: &str, released: &str, targets: &[(&str, &str)]) -> Baseline {
        Baseline {
            id: name.into(),
            name: name.into(),
            product: "demo".into(),
            released: parse_time(released).unwrap_or_default(),
            planned: true,
            reason: String::new(),
            targets: targets.iter().map(|(f, b)| (f.to_string(), b.to_string())).collect(),
        }
    }

    fn hotpatch(id: &str, build: &str, level: i64, class: &str, cve: &str) -> Hotpatch {
        Hotpatch {
            patch_id: id.into(),
            artifact_sha256: String::new(),
            product: "demo".into(),
            build_id: build.into(),
            file_name: "libdemo.so.1".into(),
            arch: "x86_64".into(),
            level,
            classification: class.into(),
            cves: vec![cve.into()],
            description: String::new(),
            created: "2027-08-01T00:00:00Z".into(),
            key_id: String::new(),
        }
    }

    const A: &str = "aaaa";
    const B: &str = "bbbb";

    fn at(day: &str) -> i64 {
        parse_time(&format!("{day}T12:00:00Z")).unwrap_or_default()
    }

    #[test]
    fn a_year_of_offers_for_one_target() {
        let july = baseline("2027.07", "2027-07-13T00:00:00Z", &[("libdemo.so.1", A), ("other", "cccc")]);
        let hot = [hotpatch("fix-1", A, 1, "security", "CVE-2027-0001")];
        // August: level 1 is out and applies without a restart.
        let o = OfferContext {
            baselines: std::slice::from_ref(&july),
            hotpatches: &hot,
            entitled: true,
            now: at("2027-08-20"),
            grace_days: 0,
        }
        .offer(A, 0)
        .expect("known")
        .expect("ok");
        assert!(matches!(o, Offer::Hotpatch { level: 1, .. }), "{o:?}");
        // Applied: up to date.
        let o = OfferContext {
            baselines: std::slice::from_ref(&july),
            hotpatches: &hot,
            entitled: true,
            now: at("2027-08-20"),
            grace_days: 0,
        }
        .offer(A, 1)
        .expect("known")
        .expect("ok");
        assert!(matches!(o, Offer::UpToDate { .. }), "{o:?}");
        // Not entitled: no hotpatch, and the reason says so.
        let o = OfferContext {
            baselines: std::slice::from_ref(&july),
            hotpatches: &hot,
            entitled: false,
            now: at("2027-08-20"),
            grace_days: 0,
        }
        .offer(A, 0)
        .expect("known")
        .expect("ok");
        assert!(o.reason().contains("not entitled"), "{o:?}");
        // October: the next baseline ships a new build; past the grace, restart.
        let october = baseline("2027.10", "2027-10-12T00:00:00Z", &[("libdemo.so.1", B), ("other", "cccc")]);
        let both = [july.clone(), october];
        let o =
            OfferContext { baselines: &both, hotpatches: &hot, entitled: true, now: at("2027-12-01"), grace_days: 0 }
                .offer(A, 1)
                .expect("known")
                .expect("ok");
        assert!(matches!(&o, Offer::Baseline { baseline, .. } if baseline.as_str() == "2027.10"), "{o:?}");
        // A file the October baseline did not rebuild counts from July and is current.
        let o =
            OfferContext { baselines: &both, hotpatches: &hot, entitled: true, now: at("2027-12-01"), grace_days: 0 }
                .offer("cccc", 0)
                .expect("known")
                .expect("ok");
        assert!(matches!(o, Offer::UpToDate { .. }), "{o:?}");
    }

    #[test]
    fn a_fix_that_cannot_be_hotpatched_is_never_offered_as_one() {
        let july = baseline("2027.07", "2027-07-13T00:00:00Z", &[("libdemo.so.1", A)]);
        let hot = [hotpatch("fix-1", A, 1, "non-security", "CVE-2027-0009")];
        let o =
            OfferContext { baselines: &[july], hotpatches: &hot, entitled: true, now: at("2027-08-20"), grace_days: 0 }
                .offer(A, 0)
                .expect("known")
                .expect("ok");
        assert!(!matches!(o, Offer::Hotpatch { .. }), "{o:?}");
        assert!(o.reason().contains("non-security"), "{o:?}");
    }

    #[test]
    fn unknown_builds_and_bad_catalogs_are_told_apart() {
        let july = baseline("2027.07", "2027-07-13T00:00:00Z", &[("libdemo.so.1", A)]);
        assert!(
            OfferContext {
                baselines: std::slice::from_ref(&july),
                hotpatches: &[],
                entitled: true,
                now: at("2027-08-20"),
                grace_days: 0
            }
            .offer("ffff", 0)
            .is_none()
        );
        let twice = [
            hotpatch("fix-1", A, 1, "security", "CVE-2027-0001"),
            hotpatch("fix-1b", A, 1, "security", "CVE-2027-0002"),
        ];
        let e = OfferContext {
            baselines: &[july],
            hotpatches: &twice,
            entitled: true,
            now: at("2027-08-20"),
            grace_days: 0,
        }
        .offer(A, 0)
        .expect("known")
        .expect_err("duplicate level");
        assert!(e.contains("level 1"), "{e}");
    }
}
