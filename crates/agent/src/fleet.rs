//! A hotpatch applied to every process that maps its target, each process on
//! its own: one that fails (busy past the timeout, exited, traced by a
//! debugger) does not stop the others, and says why and whether trying again
//! may help. Each process's transition is journaled (intent, then outcome).

use hotpatch_engine::{ApplyOptions, EngineError, PlanCache};
use hotpatch_format::VerifiedPackage;
use serde::Serialize;

use crate::journal::Journal;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProcessResult {
    pub pid: i32,
    pub comm: String,
    pub ok: bool,
    /// A failure that may pass (busy, traced, a transient error): try again later.
    pub retry: bool,
    /// The process exited or exec'd another program meanwhile: nothing to do for it.
    pub gone: bool,
    /// First thread stopped to last resumed, when a transition switched it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_us: Option<u64>,
    /// Wall time of this process's apply (journal, plan or its reuse, map,
    /// transition), when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply_us: Option<u64>,
    pub detail: String,
}

/// Whether an engine failure may go away by itself.
pub fn retryable(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Busy { .. }
            | EngineError::Traced { .. }
            | EngineError::Ptrace { .. }
            | EngineError::Io { .. }
            | EngineError::Inject { .. }
    )
}

/// The highest active level of `build_id` applied in `pid` (0: none).
pub fn applied_level(pid: i32, build_id: &str) -> u32 {
    hotpatch_engine::status(pid)
        .unwrap_or_default()
        .iter()
        .filter(|a| a.active && a.record.build_id == build_id)
        .map(|a| a.record.level)
        .max()
        .unwrap_or(0)
}

/// Build-ids of mapped files, read once per file however many processes map
/// it: most processes share their libraries, so a machine-wide look costs
/// about one read per distinct file instead of one per mapping.
#[derive(Debug, Default)]
pub struct BuildIds {
    by_file: std::collections::HashMap<(u64, String), Option<String>>,
}

impl BuildIds {
    /// Build-ids (hex) of the ELF objects `pid` maps.
    pub fn of(&mut self, pid: i32) -> std::collections::BTreeSet<String> {
        let Ok(maps) = hotpatch_engine::procfs::maps(pid) else { return Default::default() };
        let mut out = std::collections::BTreeSet::new();
        for m in maps.iter().filter(|m| m.inode != 0 && m.offset == 0 && m.path.starts_with('/')) {
            let key = (m.inode, m.path.clone());
            let id = match self.by_file.get(&key) {
                Some(id) => id.clone(),
                None => {
                    let id = build_id_of_file(&m.map_file(pid));
                    self.by_file.insert(key, id.clone());
                    id
                }
            };
            out.extend(id);
        }
        out
    }
}

/// The GNU build-id of an ELF file, from its first 64 KiB (where the note is
/// in practice), else from the whole file, as the engine reads it.
fn build_id_of_file(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut prefix = Vec::new();
    std::fs::File::open(path).ok()?.take(64 * 1024).read_to_end(&mut prefix).ok()?;
    if !prefix.starts_with(b"\x7fELF") {
        return None;
    }
    if let Some(id) = hotpatch_elf::build_id_from_prefix(&prefix) {
        return Some(hex::encode(id));
    }
    let data = std::fs::read(path).ok()?;
    let elf = hotpatch_elf::TargetElf::parse(&data).ok()?;
    elf.build_id().ok()?.map(hex::encode)
}

/// Processes that map the target of `build_id` below `level`.
pub fn pids_needing(build_id: &str, level: u32) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut ids = BuildIds::default();
    hotpatch_engine::procfs::pids()
        .into_iter()
        .filter(|&pid| pid != me && ids.of(pid).contains(build_id) && applied_level(pid, build_id) < level)
        .collect()
}

/// Applies `package` to one process, journaling the intent before and the outcome after.
pub fn apply_one(
    pid: i32,
    package: &VerifiedPackage,
    opts: &ApplyOptions,
    journal: Option<&mut Journal>,
) -> ProcessResult {
    apply_one_planned(pid, package, opts, journal, &mut PlanCache::new())
}

/// [`apply_one`] with the plans of earlier processes (`cache`): one caller
/// applying a hotpatch to many processes plans it once.
pub fn apply_one_planned(
    pid: i32,
    package: &VerifiedPackage,
    opts: &ApplyOptions,
    journal: Option<&mut Journal>,
    cache: &mut PlanCache,
) -> ProcessResult {
    let started = std::time::Instant::now();
    let m = &package.manifest;
    let mut journal = journal;
    let id = match journal.as_deref_mut().map(|j| j.intent("apply", pid, &m.patch_id, m.level, &m.target.build_id)) {
        // Without the intent on disk a crash could not be repaired: do not touch the process.
        Some(Err(e)) => return not_journaled(pid, &e),
        Some(Ok(id)) => Some(id),
        None => None,
    };
    let result = apply_journaled(pid, package, opts, cache);
    if let (Some(j), Some(id)) = (journal, id)
        && let Err(e) = j.outcome(id, result.ok, &result.detail)
    {
        tracing::warn!(error = %e, pid, "cannot journal the outcome; repair will read it from the process");
    }
    ProcessResult { apply_us: Some(started.elapsed().as_micros() as u64), ..result }
}

/// A process left untouched because its intent could not be journaled.
fn not_journaled(pid: i32, e: &crate::journal::JournalError) -> ProcessResult {
    ProcessResult {
        pid,
        comm: hotpatch_engine::procfs::comm(pid),
        ok: false,
        retry: true,
        gone: false,
        pause_us: None,
        apply_us: None,
        detail: format!("not applied: {e}"),
    }
}

/// The apply itself, under the machine lock, once its intent is journaled.
fn apply_journaled(pid: i32, package: &VerifiedPackage, opts: &ApplyOptions, cache: &mut PlanCache) -> ProcessResult {
    let m = &package.manifest;
    let comm = hotpatch_engine::procfs::comm(pid);
    let lock = crate::lock::shared();
    let applied = hotpatch_engine::apply_planned(pid, package, opts, cache);
    drop(lock);
    let (ok, retry, gone, pause_us, detail) = match applied {
        Ok(r) => {
            let mut detail =
                format!("level {} applied ({} functions, pause {} µs)", r.level, r.functions.len(), r.pause_us);
            // Applied all the same, but the operator must hear of it: the
            // hotpatch's own set-up after the switch may not have happened.
            if let Some(p) = &r.callback_problem {
                tracing::warn!(pid, callback = %p.callback, problem = %p.problem, "post-apply callback did not complete");
                detail.push_str(&format!("; {} did not complete: {}", p.callback, p.problem));
            }
            (true, false, false, Some(r.pause_us), detail)
        }
        Err(EngineError::LevelNotHigher { applied, .. }) if applied >= m.level => {
            (true, false, false, None, format!("level {applied} already applied"))
        }
        Err(e) => {
            let gone = matches!(e, EngineError::ProcessExited(_) | EngineError::TargetNotMapped { .. });
            (false, retryable(&e), gone, None, e.to_string())
        }
    };
    ProcessResult { pid, comm, ok, retry, gone, pause_us, apply_us: None, detail }
}

/// Applies `package` to every process that maps its target below its level,
/// planning once. The intents of all of them are journaled in one durable
/// write before the first is touched, the outcomes in one after the last: a
/// crash in between leaves open intents that `repair` closes from what each
/// process shows (applied, or untouched), as for a single apply.
pub fn apply_everywhere(
    package: &VerifiedPackage,
    opts: &ApplyOptions,
    journal: Option<&mut Journal>,
) -> Vec<ProcessResult> {
    let m = &package.manifest;
    let pids = pids_needing(&m.target.build_id, m.level);
    let mut journal = journal;
    let ids: Vec<Option<u64>> = match journal.as_deref_mut() {
        None => vec![None; pids.len()],
        Some(j) => match j.intents("apply", &pids, &m.patch_id, m.level, &m.target.build_id) {
            Ok(ids) => ids.into_iter().map(Some).collect(),
            Err(e) => return pids.iter().map(|&pid| not_journaled(pid, &e)).collect(),
        },
    };
    let mut cache = PlanCache::new();
    let results: Vec<ProcessResult> = pids
        .iter()
        .map(|&pid| {
            let started = std::time::Instant::now();
            let r = apply_journaled(pid, package, opts, &mut cache);
            ProcessResult { apply_us: Some(started.elapsed().as_micros() as u64), ..r }
        })
        .collect();
    tracing::debug!(stats = ?cache.stats(), "plans made and reused");
    if let Some(j) = journal {
        let outcomes = ids.iter().zip(&results).filter_map(|(id, r)| Some((((*id)?), r.ok, r.detail.as_str())));
        if let Err(e) = j.outcomes(outcomes) {
            tracing::warn!(error = %e, "cannot journal the outcomes; repair will read them from the processes");
        }
    }
    results
}

/// Rolls `patch_id` back in one process under the machine lock, journaling
/// the intent before and the outcome after (`build_id` as far as known).
pub fn rollback_one(
    pid: i32,
    patch_id: &str,
    build_id: &str,
    opts: &ApplyOptions,
    journal: Option<&mut Journal>,
) -> Result<hotpatch_engine::RollbackReport, EngineError> {
    let mut journal = journal;
    let id = journal.as_deref_mut().and_then(|j| j.intent("rollback", pid, patch_id, 0, build_id).ok());
    let lock = crate::lock::shared();
    let result = hotpatch_engine::rollback(pid, Some(patch_id), opts);
    drop(lock);
    if let (Some(j), Some(id)) = (journal, id) {
        let detail = result.as_ref().map_or_else(|e| e.to_string(), |_| "rolled back".to_string());
        let _ = j.outcome(id, result.is_ok(), &detail);
    }
    result
}
