//! The daemon's rescan: new processes (and those due for a retry) are looked
//! at and given every job whose target they map, one process at a time.

use std::time::Instant;

use hotpatch_engine::ApplyOptions;
use hotpatch_engine::procfs;

use super::{Daemon, FULL_RESCAN, signals};
use crate::journal::start_time;

impl Daemon {
    pub(super) fn rescan(&mut self, full: bool) {
        if full {
            self.seen.clear();
            // A file rewritten in place keeps its inode: read build-ids afresh now and then.
            self.build_ids = crate::fleet::BuildIds::default();
            self.next_full_rescan = Instant::now() + FULL_RESCAN;
        }
        if self.jobs.is_empty() {
            return;
        }
        let me = std::process::id() as i32;
        let first = self.seen.is_empty() && !full;
        for pid in procfs::pids() {
            // SIGTERM: the transition in progress has finished; start no other.
            if signals::stop_requested() {
                break;
            }
            let Some(start) = start_time(pid).filter(|_| pid != me) else { continue };
            let key = (pid, start);
            let new = self.seen.insert(key);
            let max = self.config.max_attempts;
            let retry_due = self.jobs.values().any(|j| j.procs.contains_key(&key) && j.due(&key, max));
            if new || retry_due {
                self.visit(key);
            }
        }
        self.collect_results();
        if first {
            tracing::info!(processes = self.seen.len(), "every process looked at");
        }
    }

    /// Processes named by exec events, once the loader had its moment.
    pub(super) fn look_at_new_processes(&mut self) {
        let now = Instant::now();
        if self.jobs.is_empty() {
            self.soon.clear();
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = self.soon.drain(..).partition(|(at, _)| *at <= now);
        self.soon = later;
        let mut looked = false;
        for (_, pid) in due {
            let Some(start) = start_time(pid) else { continue };
            // An exec keeps pid and start time but runs a new program: forget
            // what was tried on the old one and look again.
            self.seen.insert((pid, start));
            for job in self.jobs.values_mut() {
                job.procs.remove(&(pid, start));
            }
            tracing::debug!(pid, "process exec'd; looking at it");
            self.visit((pid, start));
            looked = true;
        }
        if looked {
            self.collect_results();
        }
    }

    /// Applies each due job whose target this process maps.
    pub(super) fn visit(&mut self, key: (i32, u64)) {
        let (pid, _) = key;
        let builds = self.build_ids.of(pid);
        let opts = ApplyOptions { timeout: self.config.apply_timeout(), ..ApplyOptions::default() };
        let (max, retry_max) =
            (self.config.max_attempts, std::time::Duration::from_secs(self.config.retry_max_seconds));
        for job in self.jobs.values_mut() {
            if !builds.contains(job.build_id()) || !job.due(&key, max) {
                continue;
            }
            if crate::fleet::applied_level(pid, job.build_id()) >= job.level() && !job.procs.contains_key(&key) {
                continue;
            }
            let result =
                crate::fleet::apply_one_planned(pid, &job.package, &opts, Some(&mut self.journal), &mut job.plans);
            if result.ok {
                tracing::info!(pid, comm = %result.comm, patch = %job.package.manifest.patch_id, detail = %result.detail, "hotpatch applied");
            }
            job.record(key, result, retry_max);
        }
    }

    /// Forgets processes that are gone and queues results that changed.
    pub(super) fn collect_results(&mut self) {
        let max = self.config.max_attempts;
        for job in self.jobs.values_mut() {
            job.procs.retain(|(pid, start), _| start_time(*pid) == Some(*start));
            self.outbox.extend(job.new_results(max));
        }
    }
}
