//! A catalog made of a directory of signed `.hpatch` packages, each verified
//! against the trust directory, and the offer for one running target from it
//! (through `hotpatch_release::decide`, as the server decides).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hotpatch_format::{Manifest, TrustStore, VerifiedPackage};
use hotpatch_release::{
    BaselineId, BaselineKind, BuildId, CatalogBaseline, CatalogHotpatch, CveId, Offer, OfferInput, PatchId,
    ProductCatalog, ProductName, RunningBaseline,
};

/// Largest package read from the catalog directory (as the server accepts).
const MAX_PACKAGE: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// One package of the directory that verified.
#[derive(Debug, Clone)]
pub struct Entry {
    pub file: PathBuf,
    pub manifest: Manifest,
}

/// The verified packages of a directory, and why the others were left out.
#[derive(Debug, Default)]
pub struct DirCatalog {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
    pub problems: Vec<String>,
}

/// Reads and verifies `path` (one package file of the catalog).
pub fn read_verified(path: &Path, trust: &TrustStore) -> Result<VerifiedPackage, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if size > MAX_PACKAGE {
        return Err(format!("{}: larger than {MAX_PACKAGE} bytes", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    hotpatch_format::verify(&bytes, trust).map_err(|e| format!("{}: verification failed, ignored: {e}", path.display()))
}

impl DirCatalog {
    /// Every `*.hpatch` of `dir`, verified; a package that fails is a problem, not an error.
    pub fn load(dir: &Path, trust: &TrustStore) -> Result<DirCatalog, CatalogError> {
        let io = |source| CatalogError::Io { path: dir.to_path_buf(), source };
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir).map_err(io)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io)?;
        files.retain(|f| f.extension().is_some_and(|e| e == "hpatch"));
        files.sort();
        let mut catalog = DirCatalog { dir: dir.to_path_buf(), ..DirCatalog::default() };
        for file in files {
            match read_verified(&file, trust) {
                Ok(p) => catalog.add(file, p.manifest),
                Err(problem) => catalog.problems.push(problem),
            }
        }
        Ok(catalog)
    }

    fn add(&mut self, file: PathBuf, manifest: Manifest) {
        let clash = self.entries.iter().find(|e| {
            e.manifest.target.build_id == manifest.target.build_id
                && (e.manifest.level == manifest.level || e.manifest.product != manifest.product)
        });
        if let Some(first) = clash {
            self.problems.push(format!(
                "{}: {} level {} clashes with {} ({} level {}); ignored",
                file.display(),
                manifest.patch_id,
                manifest.level,
                first.file.display(),
                first.manifest.patch_id,
                first.manifest.level
            ));
            return;
        }
        self.entries.push(Entry { file, manifest });
    }

    /// Packages for one target build-id, lowest level first.
    pub fn for_build(&self, build_id: &str) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.iter().filter(|e| e.manifest.target.build_id == build_id).collect();
        v.sort_by_key(|e| e.manifest.level);
        v
    }

    /// The highest-level package for each target build-id.
    pub fn latest(&self) -> BTreeMap<&str, &Entry> {
        let mut out: BTreeMap<&str, &Entry> = BTreeMap::new();
        for e in &self.entries {
            let slot = out.entry(e.manifest.target.build_id.as_str()).or_insert(e);
            if e.manifest.level > slot.manifest.level {
                *slot = e;
            }
        }
        out
    }
}

/// The offer for a target running at `applied` with these packages, decided
/// by the release rules. A directory has no baselines or dates: the running
/// build is its own baseline and every package in the directory counts as released.
pub fn offer(
    build_id: &str,
    applied: Option<u32>,
    entries: &[&Entry],
    today: jiff::civil::Date,
) -> Result<Offer, String> {
    let first = entries.first().ok_or("no package for this target")?;
    let product = ProductName::new(first.manifest.product.clone()).map_err(|e| e.to_string())?;
    let build = BuildId::new(build_id.to_string()).map_err(|e| e.to_string())?;
    let short: String = build_id.chars().take(16).collect();
    let baseline = BaselineId::new(format!("build-{short}")).map_err(|e| e.to_string())?;
    let epoch = jiff::civil::date(1970, 1, 1);
    let mut hotpatches = Vec::new();
    for e in entries {
        let m = &e.manifest;
        hotpatches.push(CatalogHotpatch {
            baseline_build_id: build.clone(),
            patch_id: PatchId::new(m.patch_id.clone()).map_err(|e| e.to_string())?,
            level: m.level,
            classification: m.classification,
            cves: m.cves.iter().filter_map(|c| CveId::new(c.clone()).ok()).collect(),
            release_date: epoch.tomorrow().unwrap_or(epoch),
        });
    }
    let input = OfferInput {
        running: RunningBaseline {
            product: product.clone(),
            baseline: baseline.clone(),
            build_id: build.clone(),
            release_date: epoch,
        },
        applied_level: applied.filter(|&l| l > 0),
        catalog: ProductCatalog {
            product,
            baselines: vec![CatalogBaseline {
                id: baseline,
                build_id: build,
                release_date: epoch,
                kind: BaselineKind::Planned,
            }],
            hotpatches,
        },
        entitled: true,
        today,
        grace_days: 0,
    };
    hotpatch_release::decide(&input).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::manifest;
    use hotpatch_format::Classification;

    const B: &str = "ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34";

    fn entry(level: u32, c: Classification) -> Entry {
        Entry { file: format!("/c/l{level}.hpatch").into(), manifest: manifest(B, level, c) }
    }

    fn today() -> jiff::civil::Date {
        jiff::civil::date(2026, 12, 2)
    }

    #[test]
    fn the_highest_level_is_offered_with_the_cves_of_every_level_it_brings() {
        let (e1, e2) = (entry(1, Classification::Security), entry(2, Classification::Critical));
        let offer = offer(B, None, &[&e1, &e2], today()).expect("offer");
        assert!(matches!(&offer, Offer::Hotpatch { level: 2, cves, .. } if cves.len() == 2), "{offer:?}");
        let offer = offer_at(1, &[&e1, &e2]);
        assert!(matches!(offer, Offer::Hotpatch { level: 2, .. }));
        assert!(matches!(offer_at(2, &[&e1, &e2]), Offer::UpToDate { .. }));
        assert!(matches!(offer_at(5, &[&e1, &e2]), Offer::UpToDate { .. }), "a level above the catalog's");
    }

    fn offer_at(applied: u32, entries: &[&Entry]) -> Offer {
        offer(B, Some(applied), entries, today()).expect("offer")
    }

    #[test]
    fn a_level_that_cannot_ship_as_a_hotpatch_blocks_the_levels_above_it() {
        let (e1, e2) = (entry(1, Classification::NonSecurity), entry(2, Classification::Security));
        let offer = offer(B, None, &[&e1, &e2], today()).expect("offer");
        assert!(
            matches!(&offer, Offer::UpToDate { reason } if reason.contains("cannot ship as a hotpatch")),
            "{offer:?}"
        );
    }

    #[test]
    fn clashing_packages_are_left_out_and_named() {
        let mut c = DirCatalog::default();
        c.add("/c/a.hpatch".into(), manifest(B, 1, Classification::Security));
        c.add("/c/b.hpatch".into(), manifest(B, 1, Classification::Security));
        let mut other = manifest(B, 2, Classification::Security);
        other.product = "another".into();
        c.add("/c/c.hpatch".into(), other);
        c.add("/c/d.hpatch".into(), manifest(B, 3, Classification::Security));
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.problems.len(), 2, "{:?}", c.problems);
        assert!(c.problems[0].contains("/c/b.hpatch") && c.problems[0].contains("/c/a.hpatch"));
        assert_eq!(c.latest().get(B).map(|e| e.manifest.level), Some(3));
    }
}
