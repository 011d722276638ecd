//! `hotpatch scan`: every running process and the targets it maps, against a
//! catalog (a directory of signed packages, or the control plane's answer):
//! up to date, hotpatch level N available (no restart), or restart required,
//! with the reason and the processes concerned.

pub mod catalog;
pub mod kernel;
pub mod stale;

use std::collections::BTreeMap;

use hotpatch_engine::RunningTarget;
use hotpatch_release::Offer;
use serde::Serialize;

pub use catalog::DirCatalog;
pub use stale::StaleFile;

use crate::protocol::Answer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    UpToDate,
    HotpatchAvailable,
    RestartRequired,
    /// The catalog has nothing for this target.
    NotInCatalog,
}

impl Status {
    pub fn describe(self, level: Option<u32>) -> String {
        match self {
            Status::UpToDate => "up to date".into(),
            Status::HotpatchAvailable => format!("hotpatch level {} available (no restart)", level.unwrap_or(0)),
            Status::RestartRequired => "restart required".into(),
            Status::NotInCatalog => "not in the catalog".into(),
        }
    }
}

/// What the catalog says for one target at one applied level.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub status: Status,
    pub level: Option<u32>,
    pub patch_id: Option<String>,
    pub cves: Vec<String>,
    pub reason: String,
}

impl Verdict {
    fn new(status: Status, reason: impl Into<String>) -> Verdict {
        Verdict { status, level: None, patch_id: None, cves: Vec::new(), reason: reason.into() }
    }
}

/// A process, as scans name it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: i32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl std::fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.pid, self.comm)?;
        if let Some(unit) = &self.unit {
            write!(f, " [{unit}]")?;
        }
        Ok(())
    }
}

/// One target at one applied level, and the processes that run it so.
#[derive(Debug, Clone, Serialize)]
pub struct TargetScan {
    pub build_id: String,
    pub path: String,
    pub applied_level: Option<u32>,
    pub applied_patch_id: Option<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub processes: Vec<ProcessRef>,
}

/// A process and the targets it maps.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessScan {
    #[serde(flatten)]
    pub process: ProcessRef,
    pub targets: Vec<ProcessTarget>,
    /// Code files replaced or deleted on disk since it mapped them: restart it.
    pub stale: Vec<StaleFile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessTarget {
    pub build_id: String,
    pub path: String,
    pub applied_level: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    /// Where the offers came from.
    pub catalog: String,
    /// Targets the catalog knows, that have a hotpatch applied, or that need a restart.
    pub targets: Vec<TargetScan>,
    /// Targets with nothing to report (not in the catalog, nothing applied, not stale).
    pub other_targets: usize,
    pub processes: Vec<ProcessScan>,
    pub kernel: kernel::KernelScan,
    /// Packages left out of the catalog, and other things worth knowing.
    pub problems: Vec<String>,
}

impl ScanReport {
    /// Processes that must restart to run what is installed, with their stale files.
    pub fn restart_required(&self) -> impl Iterator<Item = &ProcessScan> {
        self.processes.iter().filter(|p| !p.stale.is_empty())
    }
}

/// Where offers come from.
pub enum Source<'a> {
    Dir(&'a DirCatalog),
    /// The control plane's last answer (work assigned to this machine).
    Server {
        base: String,
        answer: &'a Answer,
    },
}

impl Source<'_> {
    fn name(&self) -> String {
        match self {
            Source::Dir(c) => format!("directory {} ({} verified packages)", c.dir.display(), c.entries.len()),
            Source::Server { base, .. } => format!("control plane {base}"),
        }
    }

    fn verdict(&self, build_id: &str, file_name: &str, applied: Option<u32>, today: jiff::civil::Date) -> Verdict {
        match self {
            Source::Dir(c) => {
                let entries = c.for_build(build_id);
                if entries.is_empty() {
                    return Verdict::new(Status::NotInCatalog, "no hotpatch for this build in the catalog");
                }
                match catalog::offer(build_id, applied, &entries, today) {
                    Ok(offer) => from_offer(offer),
                    Err(e) => Verdict::new(Status::NotInCatalog, format!("catalog entry unusable: {e}")),
                }
            }
            Source::Server { answer, .. } => from_answer(answer, build_id, file_name, applied),
        }
    }
}

fn from_offer(offer: Offer) -> Verdict {
    match offer {
        Offer::UpToDate { reason } => Verdict::new(Status::UpToDate, reason),
        Offer::Hotpatch { level, patch_id, cves, reason } => Verdict {
            status: Status::HotpatchAvailable,
            level: Some(level),
            patch_id: Some(patch_id.as_str().to_string()),
            cves: cves.iter().map(|c| c.as_str().to_string()).collect(),
            reason,
        },
        Offer::Baseline { baseline, reason, .. } => {
            Verdict::new(Status::RestartRequired, format!("install baseline {baseline}: {reason}"))
        }
    }
}

fn from_answer(answer: &Answer, build_id: &str, file_name: &str, applied: Option<u32>) -> Verdict {
    if let Some(b) = answer.baselines.iter().find(|b| b.file_names.iter().any(|f| f == file_name)) {
        return Verdict::new(Status::RestartRequired, format!("install baseline {}: {}", b.baseline, b.reason));
    }
    match answer.hotpatches.iter().filter(|h| h.build_id == build_id).max_by_key(|h| h.level) {
        Some(h) if applied.unwrap_or(0) < h.level => Verdict {
            status: Status::HotpatchAvailable,
            level: Some(h.level),
            patch_id: Some(h.patch_id.clone()),
            cves: Vec::new(),
            reason: format!("deployment {} assigns {} level {} (no restart)", h.deployment_id, h.patch_id, h.level),
        },
        Some(h) => Verdict::new(Status::UpToDate, format!("{} level {} is applied", h.patch_id, h.level)),
        None => Verdict::new(Status::NotInCatalog, "nothing assigned by the control plane"),
    }
}

/// The highest active level applied to this target in this process.
fn applied_of(t: &RunningTarget) -> Option<(u32, String)> {
    t.applied
        .iter()
        .filter(|a| a.active)
        .max_by_key(|a| a.record.level)
        .map(|a| (a.record.level, a.record.patch_id.clone()))
}

fn file_name(path: &str) -> &str {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    path.rsplit('/').next().unwrap_or(path)
}

/// Scans every running process against `source`.
pub fn scan(source: &Source<'_>) -> ScanReport {
    let running = hotpatch_engine::running_targets();
    let today = jiff::Zoned::now().date();
    let processes = processes(&running);
    // A process running a file replaced on disk needs a restart whatever the
    // catalog says; other processes of the same build may not (another copy).
    type Key = (String, Option<u32>, bool);
    let mut groups: BTreeMap<Key, (String, Option<String>, Vec<ProcessRef>)> = BTreeMap::new();
    for t in &running {
        let applied = applied_of(t);
        let proc = processes.iter().find(|p| p.process.pid == t.pid);
        let stale = proc.is_some_and(|p| p.stale.iter().any(|f| f.running_build_id.as_deref() == Some(&t.build_id)));
        let key = (t.build_id.clone(), applied.as_ref().map(|a| a.0), stale);
        let entry = groups.entry(key).or_insert_with(|| (t.path.clone(), applied.map(|a| a.1), Vec::new()));
        if !entry.2.iter().any(|p| p.pid == t.pid) {
            let p = proc.map(|p| p.process.clone());
            entry.2.push(p.unwrap_or(ProcessRef { pid: t.pid, comm: t.comm.clone(), unit: None }));
        }
    }
    let mut targets = Vec::new();
    let mut other_targets = 0;
    for ((build_id, applied_level, stale), (path, applied_patch_id, procs)) in groups {
        let mut verdict = source.verdict(&build_id, file_name(&path), applied_level, today);
        if stale {
            let names: Vec<String> = procs.iter().map(ToString::to_string).collect();
            verdict = Verdict::new(
                Status::RestartRequired,
                format!(
                    "{} was replaced or deleted on disk since it was mapped; restart {} to run the installed file",
                    path.strip_suffix(" (deleted)").unwrap_or(&path),
                    names.join(", ")
                ),
            );
        }
        if verdict.status == Status::NotInCatalog && applied_level.is_none() {
            other_targets += 1;
            continue;
        }
        targets.push(TargetScan { build_id, path, applied_level, applied_patch_id, verdict, processes: procs });
    }
    let problems = match source {
        Source::Dir(c) => c.problems.clone(),
        Source::Server { answer, .. } => answer.notes.clone(),
    };
    ScanReport { catalog: source.name(), targets, other_targets, processes, kernel: kernel::scan(), problems }
}

fn processes(running: &[RunningTarget]) -> Vec<ProcessScan> {
    let mut out: Vec<ProcessScan> = Vec::new();
    for t in running {
        let target = ProcessTarget {
            build_id: t.build_id.clone(),
            path: t.path.clone(),
            applied_level: applied_of(t).map(|a| a.0),
        };
        if let Some(p) = out.iter_mut().find(|p| p.process.pid == t.pid) {
            p.targets.push(target);
            continue;
        }
        let stale = stale::maps_of(t.pid).map(|m| stale::stale_files(t.pid, &m)).unwrap_or_default();
        let process = ProcessRef { pid: t.pid, comm: t.comm.clone(), unit: stale::unit_of(t.pid) };
        out.push(ProcessScan { process, targets: vec![target], stale });
    }
    out
}
