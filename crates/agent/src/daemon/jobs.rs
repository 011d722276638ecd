//! The daemon's work: one job per hotpatch (two deployments offering the same
//! hotpatch are one job), and per process what happened, when to try again,
//! and what to tell the server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotpatch_engine::PlanCache;
use hotpatch_format::VerifiedPackage;

use crate::fleet::ProcessResult;
use crate::protocol::WorkResult;

/// A process, told apart from a later one that reuses its pid.
pub type ProcessKey = (i32, u64);

#[derive(Debug, Clone)]
pub struct Track {
    pub attempts: u32,
    pub next_try: Instant,
    pub last: ProcessResult,
}

impl Track {
    /// Done for good: applied, or failed in a way retrying cannot help (or too often).
    pub fn settled(&self, max_attempts: u32) -> bool {
        self.last.ok || !self.last.retry || self.attempts >= max_attempts
    }
}

pub struct Job {
    pub package: Arc<VerifiedPackage>,
    /// Deployments of the control plane that assigned it (none: the local catalog).
    pub deployments: BTreeSet<String>,
    pub procs: BTreeMap<ProcessKey, Track>,
    /// What was last reported per deployment, so a result is sent once.
    pub reported: BTreeMap<String, (String, String)>,
    /// This hotpatch's plans, made at its first process and reused for the
    /// next ones (bounded: see `hotpatch_engine::plan_cache`).
    pub plans: PlanCache,
}

impl Job {
    pub fn new(package: VerifiedPackage) -> Job {
        Job {
            package: Arc::new(package),
            deployments: BTreeSet::new(),
            procs: BTreeMap::new(),
            reported: BTreeMap::new(),
            plans: PlanCache::new(),
        }
    }

    pub fn build_id(&self) -> &str {
        &self.package.manifest.target.build_id
    }

    pub fn level(&self) -> u32 {
        self.package.manifest.level
    }

    /// Records an attempt on a process; a retryable failure backs off, doubling from 1 s.
    pub fn record(&mut self, key: ProcessKey, result: ProcessResult, retry_max: Duration) {
        let track = self.procs.entry(key).or_insert_with(|| Track {
            attempts: 0,
            next_try: Instant::now(),
            last: result.clone(),
        });
        track.attempts += 1;
        let backoff = Duration::from_secs(1u64 << track.attempts.min(20).saturating_sub(1)).min(retry_max);
        track.next_try = Instant::now() + backoff;
        if !result.ok {
            tracing::warn!(pid = result.pid, patch = %self.package.manifest.patch_id, retry = result.retry,
                attempt = track.attempts, reason = %result.detail, "hotpatch not applied to a process");
        }
        track.last = result;
    }

    /// Whether this process should be tried now.
    pub fn due(&self, key: &ProcessKey, max_attempts: u32) -> bool {
        match self.procs.get(key) {
            None => true,
            Some(t) => !t.settled(max_attempts) && Instant::now() >= t.next_try,
        }
    }

    /// The result per deployment that has changed since it was last reported.
    pub fn new_results(&mut self, max_attempts: u32) -> Vec<WorkResult> {
        let Some((status, detail)) = self.summary(max_attempts) else { return Vec::new() };
        let mut out = Vec::new();
        for d in &self.deployments {
            if self.reported.get(d) != Some(&(status.clone(), detail.clone())) {
                self.reported.insert(d.clone(), (status.clone(), detail.clone()));
                out.push(WorkResult { deployment_id: d.clone(), status: status.clone(), detail: detail.clone() });
            }
        }
        out
    }

    /// "applied" once any process runs the level (the others are named and
    /// retried); "failed" only when every process failed for good; nothing
    /// while the only outcomes are failures still being retried.
    fn summary(&self, max_attempts: u32) -> Option<(String, String)> {
        let live: Vec<&Track> = self.procs.values().filter(|t| !t.last.gone).collect();
        if live.is_empty() {
            return None;
        }
        let m = &self.package.manifest;
        let ok: Vec<String> =
            live.iter().filter(|t| t.last.ok).map(|t| format!("{} ({})", t.last.pid, t.last.comm)).collect();
        let failing: Vec<String> = live
            .iter()
            .filter(|t| !t.last.ok)
            .map(|t| {
                let state = if t.settled(max_attempts) { "gave up" } else { "retrying" };
                format!(
                    "pid {} ({}): {} [{state} after {} attempt(s)]",
                    t.last.pid, t.last.comm, t.last.detail, t.attempts
                )
            })
            .collect();
        let head = format!("{} level {}", m.patch_id, m.level);
        if !ok.is_empty() {
            let mut detail = format!("{head} applied in {} of {} process(es): {}", ok.len(), live.len(), ok.join(", "));
            if !failing.is_empty() {
                detail.push_str(&format!("; not yet in {}", failing.join("; ")));
            }
            return Some(("applied".into(), crate::work::clip(detail)));
        }
        if live.iter().all(|t| t.settled(max_attempts)) {
            return Some(("failed".into(), crate::work::clip(format!("{head} failed: {}", failing.join("; ")))));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(pid: i32, ok: bool, retry: bool, gone: bool) -> ProcessResult {
        ProcessResult {
            pid,
            comm: "svc".into(),
            ok,
            retry,
            gone,
            pause_us: None,
            apply_us: None,
            detail: if ok { "applied".into() } else { "busy".into() },
        }
    }

    fn job() -> Job {
        let mut j = Job::new(crate::test_support::package("aa", 1));
        j.deployments.insert("d1".into());
        j.deployments.insert("d2".into());
        j
    }

    #[test]
    fn applied_once_any_process_runs_it_naming_the_ones_still_retried() {
        let mut j = job();
        let max = Duration::from_secs(1);
        j.record((1, 10), result(1, true, false, false), max);
        j.record((2, 20), result(2, false, true, false), max);
        let r = j.new_results(8);
        assert_eq!(r.len(), 2, "one result per deployment");
        assert_eq!(r[0].status, "applied");
        assert!(
            r[0].detail.contains("1 of 2") && r[0].detail.contains("pid 2 (svc): busy [retrying"),
            "{}",
            r[0].detail
        );
        assert!(j.new_results(8).is_empty(), "reported once");
        assert!(!j.due(&(2, 20), 8), "backing off");
        assert!(!j.due(&(1, 10), 8), "done");
        assert!(j.due(&(3, 30), 8), "a new process");
    }

    #[test]
    fn failed_only_when_every_process_gave_up_and_gone_ones_do_not_count() {
        let mut j = job();
        let max = Duration::from_secs(1);
        j.record((1, 10), result(1, false, true, false), max);
        j.record((3, 30), result(3, false, false, true), max);
        assert!(j.new_results(2).is_empty(), "still retrying: nothing to report");
        j.record((1, 10), result(1, false, true, false), max);
        let r = j.new_results(2);
        assert_eq!(r.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(), ["failed", "failed"]);
        assert!(r[0].detail.contains("gave up after 2 attempt(s)"), "{}", r[0].detail);
        assert!(!r[0].detail.contains("pid 3"), "the process that exited is not a failure");
    }
}
