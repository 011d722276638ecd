//! The daemon's check-in: report what runs here and the results waiting, take
//! the approved work, and come back after the server's interval plus jitter.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use super::Daemon;
use crate::client::{Client, MachineSigner};
use crate::{AgentError, StateError, facts, state, work};

/// A random share of `jitter_seconds`, so that machines do not check in in step.
fn jitter(jitter_seconds: u64) -> Duration {
    if jitter_seconds == 0 {
        return Duration::ZERO;
    }
    // RandomState is seeded randomly per instance: enough for spreading load.
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    Duration::from_millis(r % (jitter_seconds * 1000))
}

impl Daemon {
    /// A level revoked by a signed statement is applied to no further process.
    fn drop_revoked_jobs(&mut self, dir: &std::path::Path) -> Result<(), AgentError> {
        let floor = crate::guard::Floor::load(dir)?;
        self.jobs.retain(|id, j| {
            let keep = !floor.is_revoked(j.build_id(), j.level());
            if !keep {
                tracing::warn!(patch = %id, level = j.level(), "job dropped: its level was revoked");
            }
            keep
        });
        Ok(())
    }

    pub(super) fn check_in(&mut self) {
        let fallback = Duration::from_secs(self.config.check_in_seconds);
        let wait = match self.exchange() {
            Ok(Some(wait)) => wait,
            Ok(None) => fallback,
            Err(e) => {
                tracing::warn!(error = %e, "check-in failed; trying again later");
                fallback.min(Duration::from_secs(60))
            }
        };
        self.next_check_in = Instant::now() + wait;
    }

    /// One exchange with the server; `None` when this machine is not enrolled.
    fn exchange(&mut self) -> Result<Option<Duration>, AgentError> {
        let dir = self.config.state_dir.clone();
        let cred = match state::load_credential(&dir) {
            Ok(c) => c,
            Err(StateError::NotEnrolled(_)) => {
                // Results of local catalog work are logged only.
                self.outbox.clear();
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let key = cred.machine_key(&dir)?;
        let signer = MachineSigner { machine_id: &cred.machine_id, key: &key, state_dir: &dir };
        let client = Client::with_options(&cred.server, cred.ca_cert.as_deref(), self.config.insecure_http)?;
        if !self.outbox.is_empty() {
            // On disk before sending: a crash or a lost answer does not lose them.
            let mut pending = state::load_pending(&dir)?;
            pending.append(&mut self.outbox);
            state::save_pending(&dir, &pending)?;
        }
        let started = Instant::now();
        let running = hotpatch_engine::running_targets();
        let facts = facts::collect();
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "facts and targets collected");
        let targets = work::summarize(&running);
        let (answer, _) = work::exchange(&dir, &client, &signer, &facts, &targets)?;
        let guarded = work::guard_answer(&dir, &answer, &targets, &self.keys())?;
        tracing::info!(
            hotpatches = answer.hotpatches.len(),
            rollbacks = answer.rollbacks.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checked in"
        );
        for w in &answer.hotpatches {
            if let Some(job) = self.jobs.get_mut(&w.patch_id) {
                // Re-offered (a process lags) or offered by a second deployment: the same work.
                job.deployments.insert(w.deployment_id.clone());
                continue;
            }
            match work::fetch_package(&client, &signer, w, &guarded.catalog, &guarded.keys.publishers) {
                Ok(p) => self.add_job(p, Some(w.deployment_id.clone())),
                Err(e) => self.outbox.push(work::result(&w.deployment_id, "failed", work::clip(e))),
            }
        }
        for r in work::restarts_due(&answer.baselines, &running) {
            tracing::warn!(baseline = %r.baseline, processes = %r.processes.join(", "), "baseline due: restart required");
        }
        self.drop_revoked_jobs(&dir)?;
        for w in &answer.rollbacks {
            if !hotpatch_engine::processes_with_target(&w.build_id).is_empty()
                && let Err(refusal) = work::rollback_allowed(w, &dir)
            {
                // The job stays: an unsigned request must not stop new processes getting the fix either.
                tracing::error!(patch = %w.patch_id, reason = %refusal, "rollback asked by the server refused");
                self.outbox.push(work::result(&w.deployment_id, "failed", work::clip(refusal)));
                continue;
            }
            self.jobs.remove(&w.patch_id);
            if let Some(r) = work::roll_back(w, &dir, Some(&mut self.journal)) {
                self.outbox.push(r);
            }
        }
        let interval = if answer.interval_seconds > 0 { answer.interval_seconds } else { self.config.check_in_seconds };
        Ok(Some(Duration::from_secs(interval) + jitter(answer.jitter_seconds)))
    }
}
