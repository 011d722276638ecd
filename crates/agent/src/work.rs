//! One check-in and the work it assigns: report, download, verify, apply or roll
//! back with the engine, report the results. Bytes are applied only after
//! `hotpatch_format::verify` accepted them against the agent's own trust store,
//! whatever the server said.

use std::collections::BTreeMap;
use std::path::Path;

use hotpatch_engine::{ApplyOptions, RunningTarget};
use hotpatch_format::{TrustStore, VerifiedPackage};

use crate::fleet::ProcessResult;
use serde::Serialize;

use crate::client::{CheckInReply, Client, MachineSigner};
use crate::guard::{self, CatalogStatus, Catalogs, Keys};
use crate::protocol::{BaselineWork, CheckIn, HotpatchWork, ProcessReport, RollbackWork, TargetReport, WorkResult};
use crate::state::{self, LastAnswer};
use crate::{AgentError, facts};

#[derive(Debug, Serialize)]
pub struct CheckInOutcome {
    pub machine_id: String,
    /// The server said nothing changed (ETag matched); the saved answer was used.
    pub not_modified: bool,
    pub targets: Vec<TargetReport>,
    pub results: Vec<WorkResult>,
    /// Whether the results reached the server; if not they go with the next check-in.
    pub results_reported: bool,
    pub baselines_due: Vec<BaselineWork>,
    /// For each baseline due, the processes that must restart to run it ("pid (comm)").
    #[serde(default)]
    pub restart: Vec<RestartDue>,
    pub notes: Vec<String>,
    /// The publishers' signed catalogs as this machine sees them (stale, refused), as one.
    pub catalog: CatalogStatus,
    /// Each publisher's catalog.
    pub catalogs: Vec<CatalogStatus>,
    pub entitled: bool,
}

/// A baseline the server says to install, and the running processes that map
/// one of its files: they run the old code until they restart.
#[derive(Debug, Clone, Serialize)]
pub struct RestartDue {
    pub baseline: String,
    pub processes: Vec<String>,
}

/// Names the processes that map a file of each baseline due.
pub fn restarts_due(baselines: &[BaselineWork], running: &[RunningTarget]) -> Vec<RestartDue> {
    baselines
        .iter()
        .map(|b| {
            let mut processes: Vec<String> = running
                .iter()
                .filter(|t| {
                    let name = t.path.strip_suffix(" (deleted)").unwrap_or(&t.path);
                    b.file_names.iter().any(|f| name.rsplit('/').next() == Some(f.as_str()))
                })
                .map(|t| format!("{} ({})", t.pid, t.comm))
                .collect();
            processes.dedup();
            RestartDue { baseline: b.baseline.clone(), processes }
        })
        .collect()
}

/// A process and the hotpatch (id, level) active in it for one target.
type ProcessLevel = (i32, Option<(String, u32)>);

/// Folds per-process targets into one report per build-id. A target counts as
/// patched to the lowest level found across its processes, so a process started
/// after the last apply makes the server offer the hotpatch again. Each process
/// is listed too, with its service unit (see [`facts::service_unit`]).
pub fn summarize(running: &[RunningTarget]) -> Vec<TargetReport> {
    summarize_with(running, facts::service_unit)
}

fn summarize_with(running: &[RunningTarget], unit_of: impl Fn(i32) -> Option<String>) -> Vec<TargetReport> {
    let mut by_build: BTreeMap<&str, (String, Vec<ProcessLevel>)> = BTreeMap::new();
    for t in running {
        let file_name =
            Path::new(&t.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| t.path.clone());
        let applied = t
            .applied
            .iter()
            .filter(|a| a.active)
            .max_by_key(|a| a.record.level)
            .map(|a| (a.record.patch_id.clone(), a.record.level));
        let entry = by_build.entry(t.build_id.as_str()).or_insert_with(|| (file_name, Vec::new()));
        if !entry.1.iter().any(|(pid, _)| *pid == t.pid) {
            entry.1.push((t.pid, applied));
        }
    }
    by_build
        .into_iter()
        .map(|(build_id, (file_name, procs))| {
            let lowest =
                procs.iter().map(|(_, a)| a.clone()).min_by_key(|a| a.as_ref().map_or(0, |(_, l)| *l)).flatten();
            let process_list = procs
                .iter()
                .map(|(pid, a)| ProcessReport {
                    pid: *pid,
                    unit: unit_of(*pid),
                    applied_level: a.as_ref().map_or(0, |(_, l)| *l),
                    applied_patch_id: a.as_ref().map(|(p, _)| p.clone()),
                })
                .collect();
            TargetReport {
                build_id: build_id.to_string(),
                file_name,
                processes: procs.len() as u32,
                applied_level: lowest.as_ref().map_or(0, |(_, l)| *l),
                applied_patch_id: lowest.map(|(p, _)| p),
                error: None,
                process_list,
            }
        })
        .collect()
}

/// How a check-in is made: the keys signed statements are checked with, and
/// whether plain `http://` to a server off this machine is allowed.
#[derive(Debug, Clone, Default)]
pub struct CheckInOptions {
    pub keys: Keys,
    pub insecure_http: bool,
}

/// One check-in trusting the publisher keys in `trust` (no operations keys).
pub fn check_in_once(state_dir: &Path, trust: &TrustStore) -> Result<CheckInOutcome, AgentError> {
    check_in(state_dir, &CheckInOptions { keys: Keys::publishers_only(trust.clone()), insecure_http: false })
}

pub fn check_in(state_dir: &Path, opts: &CheckInOptions) -> Result<CheckInOutcome, AgentError> {
    let cred = state::load_credential(state_dir)?;
    let key = cred.machine_key(state_dir)?;
    let signer = MachineSigner { machine_id: &cred.machine_id, key: &key, state_dir };
    let client = Client::with_options(&cred.server, cred.ca_cert.as_deref(), opts.insecure_http)?;
    let facts = facts::collect();
    let running = hotpatch_engine::running_targets();
    let targets = summarize(&running);
    let (answer, not_modified) = exchange(state_dir, &client, &signer, &facts, &targets)?;
    let guarded = guard_answer(state_dir, &answer, &targets, &opts.keys)?;
    let mut results = Vec::new();
    for w in &answer.hotpatches {
        if let Some(r) = apply_hotpatch(&client, &signer, w, &guarded.catalog, &guarded.keys.publishers) {
            results.push(r);
        }
    }
    for w in &answer.rollbacks {
        let mut journal = crate::journal::Journal::open(state_dir).ok();
        if let Some(r) = roll_back(w, state_dir, journal.as_mut()) {
            results.push(r);
        }
    }
    let mut outcome = CheckInOutcome {
        machine_id: cred.machine_id.clone(),
        not_modified,
        targets,
        results_reported: results.is_empty(),
        results,
        restart: restarts_due(&answer.baselines, &running),
        baselines_due: answer.baselines.clone(),
        notes: answer.notes.iter().cloned().chain(guarded.notes).collect(),
        catalog: guarded.status,
        catalogs: guarded.statuses,
        entitled: answer.entitled,
    };
    if outcome.results.is_empty() {
        return Ok(outcome);
    }
    report_results(state_dir, &client, &signer, &facts, &mut outcome)?;
    Ok(outcome)
}

/// Sends the results of this check-in's work at once; kept on disk until
/// delivered, so a lost report goes out with the next check-in.
fn report_results(
    state_dir: &Path,
    client: &Client,
    signer: &MachineSigner<'_>,
    facts: &crate::protocol::Facts,
    outcome: &mut CheckInOutcome,
) -> Result<(), AgentError> {
    state::save_pending(state_dir, &outcome.results)?;
    outcome.targets = summarize(&hotpatch_engine::running_targets());
    let stale = stale_catalogs(state_dir);
    let report = CheckIn { facts, targets: &outcome.targets, results: &outcome.results, catalogs_stale: &stale };
    match client.check_in(signer, &report, None) {
        Ok(reply) => {
            state::save_pending(state_dir, &[])?;
            if let CheckInReply::Answer { etag: Some(etag), answer } = reply {
                state::save_last_answer(state_dir, &LastAnswer { etag, answer })?;
            }
            outcome.results_reported = true;
        }
        Err(e) => {
            tracing::warn!(error = %e, "results not reported; they go with the next check-in")
        }
    }
    Ok(())
}

/// Judges the answer's signed documents (`guard::guard_answer`) before any work.
pub(crate) fn guard_answer(
    state_dir: &Path,
    answer: &crate::protocol::Answer,
    targets: &[TargetReport],
    keys: &Keys,
) -> Result<guard::Guarded, AgentError> {
    Ok(guard::guard_answer(state_dir, answer, targets, keys)?)
}

/// The first half of a check-in: report what runs here with any undelivered
/// results, and get the answer (the saved one when the server says nothing changed).
pub(crate) fn exchange(
    state_dir: &Path,
    client: &Client,
    signer: &MachineSigner<'_>,
    facts: &crate::protocol::Facts,
    targets: &[TargetReport],
) -> Result<(crate::protocol::Answer, bool), AgentError> {
    let pending = state::load_pending(state_dir)?;
    let last = state::load_last_answer(state_dir)?;
    let etag = if pending.is_empty() { last.as_ref().map(|l| l.etag.as_str()) } else { None };
    let stale = stale_catalogs(state_dir);
    let reply = client.check_in(signer, &CheckIn { facts, targets, results: &pending, catalogs_stale: &stale }, etag);
    // Readiness reports the last check-in; failing to record it must not fail the check-in.
    let tried = state::LastCheckIn::now(reply.as_ref().err().map(|e| e.to_string()));
    if let Err(e) = state::save_last_checkin(state_dir, &tried) {
        tracing::warn!(error = %e, "cannot record the check-in time");
    }
    let reply = reply?;
    if !pending.is_empty() {
        state::save_pending(state_dir, &[])?;
    }
    let (answer, not_modified) = match reply {
        CheckInReply::Answer { etag, answer } => {
            if let Some(etag) = etag {
                state::save_last_answer(state_dir, &LastAnswer { etag, answer: answer.clone() })?;
            }
            (answer, false)
        }
        CheckInReply::NotModified => (last.map(|l| l.answer).unwrap_or_default(), true),
    };
    Ok((answer, not_modified))
}

/// Publishers whose catalog is stale now, for the server to show; a record
/// that cannot be read costs that report only.
fn stale_catalogs(state_dir: &Path) -> Vec<crate::protocol::StaleCatalog> {
    match guard::metadata::stale_now(state_dir, jiff::Timestamp::now()) {
        Ok(list) => {
            list.into_iter().map(|(publisher, since)| crate::protocol::StaleCatalog { publisher, since }).collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, "catalog staleness not reported");
            Vec::new()
        }
    }
}

/// Checks in without acting on the answer: what the control plane assigns to
/// this machine now (for `scan`). Returns the server's address and the answer.
pub fn fetch_answer(state_dir: &Path) -> Result<(String, crate::protocol::Answer), AgentError> {
    fetch_answer_with(state_dir, false)
}

/// [`fetch_answer`], allowing plain `http://` off this machine when `insecure_http`.
pub fn fetch_answer_with(
    state_dir: &Path,
    insecure_http: bool,
) -> Result<(String, crate::protocol::Answer), AgentError> {
    let cred = state::load_credential(state_dir)?;
    let key = cred.machine_key(state_dir)?;
    let signer = MachineSigner { machine_id: &cred.machine_id, key: &key, state_dir };
    let client = Client::with_options(&cred.server, cred.ca_cert.as_deref(), insecure_http)?;
    let running = hotpatch_engine::running_targets();
    let (answer, _) = exchange(state_dir, &client, &signer, &facts::collect(), &summarize(&running))?;
    Ok((cred.server.clone(), answer))
}

pub(crate) fn result(deployment_id: &str, status: &str, detail: String) -> WorkResult {
    WorkResult { deployment_id: deployment_id.to_string(), status: status.to_string(), detail }
}

/// Downloads an assigned hotpatch and verifies it against this machine's own
/// trust, whatever the server said: signed by a trusted publisher, the package
/// the accepted catalog metadata lists for its level, and not below the level
/// floor of its target (which it then raises, durably, before it is applied).
/// The reason in words when it is refused.
pub(crate) fn fetch_package(
    client: &Client,
    signer: &MachineSigner<'_>,
    w: &HotpatchWork,
    catalog: &Catalogs,
    trust: &TrustStore,
) -> Result<VerifiedPackage, String> {
    let bytes = client.download(signer, &w.url).map_err(|e| e.to_string())?;
    let got = hotpatch_format::sha256_hex(&bytes);
    if got != w.artifact_sha256 {
        return Err(format!("artifact hash {got} is not the assigned {}", w.artifact_sha256));
    }
    let package =
        hotpatch_format::verify(&bytes, trust).map_err(|e| format!("verification failed, not applied: {e}"))?;
    let m = &package.manifest;
    if m.patch_id != w.patch_id || m.target.build_id != w.build_id || m.level != w.level {
        return Err(format!(
            "package is {} level {} for {}, not the assigned {} level {} for {}",
            m.patch_id, m.level, m.target.build_id, w.patch_id, w.level, w.build_id
        ));
    }
    catalog.check_listed(&package, &got)?;
    admit(signer.state_dir, &package).map_err(|e| format!("not applied: {e}"))?;
    Ok(package)
}

/// Checks a verified package against the level floor of its target and
/// records its level as verified (fsync'd) before anything applies it.
pub fn admit(state_dir: &Path, package: &VerifiedPackage) -> Result<(), AdmitError> {
    let (build_id, level) = (&package.manifest.target.build_id, package.manifest.level);
    let mut floor = guard::Floor::load(state_dir)?;
    floor.check(build_id, level, &package.key_id)?;
    floor.record_verified(build_id, level, &package.key_id)?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Refused(#[from] guard::FloorRefusal),
    #[error(transparent)]
    State(#[from] crate::StateError),
}

/// Truncates a result's detail to what the server accepts.
pub(crate) fn clip(mut detail: String) -> String {
    const MAX: usize = 3900;
    if detail.len() > MAX {
        let mut end = MAX;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push_str(" …");
    }
    detail
}

fn apply_hotpatch(
    client: &Client,
    signer: &MachineSigner<'_>,
    w: &HotpatchWork,
    catalog: &Catalogs,
    trust: &TrustStore,
) -> Option<WorkResult> {
    let state_dir = signer.state_dir;
    let failed = |detail: String| Some(result(&w.deployment_id, "failed", clip(detail)));
    let package = match fetch_package(client, signer, w, catalog, trust) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let mut journal = match crate::journal::Journal::open(state_dir) {
        Ok(j) => j,
        Err(e) => return failed(format!("not applied: {e}")),
    };
    let results: Vec<ProcessResult> =
        crate::fleet::apply_everywhere(&package, &ApplyOptions::default(), Some(&mut journal))
            .into_iter()
            .filter(|r| !r.gone)
            .collect();
    if results.is_empty() {
        // The processes exited since the scan; the next check-in reports what runs now.
        return None;
    }
    let done: Vec<String> = results.iter().filter(|r| r.ok).map(|r| format!("pid {} ({})", r.pid, r.detail)).collect();
    let errors: Vec<String> =
        results.iter().filter(|r| !r.ok).map(|r| format!("pid {}: {}", r.pid, r.detail)).collect();
    tracing::info!(patch = %w.patch_id, applied = done.len(), failed = errors.len(), "hotpatch applied");
    let head = format!("{} level {}", w.patch_id, w.level);
    if errors.is_empty() {
        return Some(result(&w.deployment_id, "applied", clip(format!("{head} applied to {}", done.join(", ")))));
    }
    if !done.is_empty() {
        // One process failing does not fail the others; the target still reports
        // its lowest level, so the server offers the work again for the rest.
        let detail = format!("{head} applied to {}; not yet in {}", done.join(", "), errors.join("; "));
        return Some(result(&w.deployment_id, "applied", clip(detail)));
    }
    if results.iter().all(|r| r.retry) {
        // Every failure may pass (busy, traced): no verdict yet; the next check-in tries again.
        tracing::warn!(patch = %w.patch_id, reasons = %errors.join("; "), "not applied yet; retried at the next check-in");
        return None;
    }
    failed(format!("{head} applied to no process: {}", errors.join("; ")))
}

/// Carries out a rollback the server listed, if a signed revocation backs it.
pub(crate) fn roll_back(
    w: &RollbackWork,
    state_dir: &Path,
    mut journal: Option<&mut crate::journal::Journal>,
) -> Option<WorkResult> {
    let pids = hotpatch_engine::processes_with_target(&w.build_id);
    if pids.is_empty() {
        return None;
    }
    if let Err(refusal) = rollback_allowed(w, state_dir) {
        tracing::error!(patch = %w.patch_id, reason = %refusal, "rollback asked by the server refused");
        return Some(result(&w.deployment_id, "failed", clip(refusal)));
    }
    let opts = ApplyOptions::default();
    let mut errors = Vec::new();
    let mut done = 0;
    for pid in pids {
        match crate::fleet::rollback_one(pid, &w.patch_id, &w.build_id, &opts, journal.as_deref_mut()) {
            Ok(_) => done += 1,
            Err(hotpatch_engine::EngineError::NotApplied(_)) => {}
            Err(e) => errors.push(format!("pid {pid}: {e}")),
        }
    }
    if errors.is_empty() {
        Some(result(&w.deployment_id, "rolled-back", format!("{} rolled back in {done} process(es)", w.patch_id)))
    } else {
        Some(result(&w.deployment_id, "failed", format!("rollback of {}: {}", w.patch_id, errors.join("; "))))
    }
}

/// The levels of the rolled-back patch running here must all be revoked.
pub(crate) fn rollback_allowed(w: &RollbackWork, state_dir: &Path) -> Result<(), String> {
    let floor = guard::Floor::load(state_dir).map_err(|e| format!("rollback of {} refused: {e}", w.patch_id))?;
    let mut levels: Vec<u32> = hotpatch_engine::running_targets()
        .iter()
        .filter(|t| t.build_id == w.build_id)
        .flat_map(|t| t.applied.iter().filter(|a| a.active && a.record.patch_id == w.patch_id))
        .map(|a| a.record.level)
        .collect();
    levels.sort_unstable();
    levels.dedup();
    guard::authorize_rollback(&floor, &w.patch_id, &w.build_id, &levels)
}

/// What `--once` prints without `--json`.
pub fn describe(o: &CheckInOutcome) -> String {
    let mut out = format!(
        "machine {}: checked in ({} targets){}\n",
        o.machine_id,
        o.targets.len(),
        if o.not_modified { ", nothing changed" } else { "" }
    );
    for r in &o.results {
        out.push_str(&format!("  {} {}: {}\n", r.status, r.deployment_id, r.detail));
    }
    for (b, r) in o.baselines_due.iter().zip(&o.restart) {
        let who = if r.processes.is_empty() { String::new() } else { format!(": restart {}", r.processes.join(", ")) };
        out.push_str(&format!(
            "  baseline due: {} ({}){}{who}\n",
            b.baseline,
            b.reason,
            if b.restart { ", restart required" } else { "" }
        ));
    }
    for n in &o.notes {
        out.push_str(&format!("  note: {n}\n"));
    }
    if !o.results_reported {
        out.push_str("  results not yet reported; they go with the next check-in\n");
    }
    out
}
