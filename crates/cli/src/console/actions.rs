//! The console's actions that change something: apply, roll back, enroll,
//! settings. Each asks before it acts and shows progress process by process.

use std::collections::BTreeMap;

use hotpatch_agent::config::Config;
use hotpatch_agent::scan::Status;
use hotpatch_engine::ApplyOptions;

use super::{Console, config_path_note, yes};

impl Console<'_> {
    pub(super) fn apply_pending(&mut self) -> anyhow::Result<()> {
        let (catalog, report) = self.scan()?;
        let mut files = Vec::new();
        for t in report.targets.iter().filter(|t| t.verdict.status == Status::HotpatchAvailable) {
            let entry = catalog.for_build(&t.build_id).into_iter().find(|e| Some(e.manifest.level) == t.verdict.level);
            if let Some(e) = entry.filter(|e| !files.contains(&e.file)) {
                files.push(e.file.clone());
            }
        }
        if files.is_empty() {
            println!("nothing pending: every running target is up to date with the catalog");
            return Ok(());
        }
        if !yes(self.ask(&format!("Apply {} hotpatch(es) now, without restarting anything? [y/N]: ", files.len()))) {
            println!("nothing applied");
            return Ok(());
        }
        let trust = hotpatch_agent::load_trust(&self.config.trust_dir)?;
        hotpatch_agent::trust::check_debug_roots()?;
        hotpatch_agent::trust::prepare_state_dir(&self.config.state_dir)?;
        let mut journal = hotpatch_agent::journal::Journal::open(&self.config.state_dir)?;
        let opts = ApplyOptions { timeout: self.config.apply_timeout(), ..ApplyOptions::default() };
        for file in files {
            let package = hotpatch_agent::scan::catalog::read_verified(&file, &trust).map_err(anyhow::Error::msg)?;
            let m = &package.manifest;
            let pids = hotpatch_agent::fleet::pids_needing(&m.target.build_id, m.level);
            println!("{} level {}: {} process(es)", m.patch_id, m.level, pids.len());
            for pid in pids {
                let r = hotpatch_agent::fleet::apply_one(pid, &package, &opts, Some(&mut journal));
                let state = if r.ok { self.out.good("applied") } else { self.out.bad("failed") };
                println!("  {state} {} ({}): {}", r.pid, r.comm, r.detail);
            }
        }
        Ok(())
    }

    pub(super) fn roll_back(&mut self) -> anyhow::Result<()> {
        let mut by_patch: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for a in hotpatch_engine::status_all().into_iter().filter(|a| a.active) {
            by_patch.entry(a.record.patch_id.clone()).or_default().push(a.pid);
        }
        if by_patch.is_empty() {
            println!("no hotpatch is applied");
            return Ok(());
        }
        let list: Vec<(String, Vec<i32>)> = by_patch.into_iter().collect();
        for (i, (patch, pids)) in list.iter().enumerate() {
            println!("  {}) {patch} in {} process(es)", i + 1, pids.len());
        }
        let choice = self.ask("Roll back which (number, empty to cancel)? ").unwrap_or_default();
        let Some((patch, pids)) = choice.parse::<usize>().ok().and_then(|n| n.checked_sub(1)).and_then(|i| list.get(i))
        else {
            println!("nothing rolled back");
            return Ok(());
        };
        let opts = ApplyOptions { timeout: self.config.apply_timeout(), ..ApplyOptions::default() };
        let mut journal = hotpatch_agent::journal::Journal::open(&self.config.state_dir).ok();
        for &pid in pids {
            match hotpatch_agent::fleet::rollback_one(pid, patch, "", &opts, journal.as_mut()) {
                Ok(r) => println!("  {} {patch} in {pid} (pause {} µs)", self.out.good("rolled back"), r.pause_us),
                Err(e) => println!("  {} {pid}: {e}", self.out.bad("failed")),
            }
        }
        Ok(())
    }

    pub(super) fn enrollment(&mut self) -> anyhow::Result<()> {
        let dir = self.config.state_dir.clone();
        if let Ok(c) = hotpatch_agent::state::load_credential(&dir) {
            println!("enrolled as machine {} with {}", c.machine_id, c.server);
            return Ok(());
        }
        println!("not enrolled with a control plane");
        let url = self.ask("Server URL (empty to cancel): ").unwrap_or_default();
        if url.is_empty() {
            return Ok(());
        }
        let token = self.ask("Enrollment token: ").unwrap_or_default();
        hotpatch_agent::trust::prepare_state_dir(&dir)?;
        let c = hotpatch_agent::enroll_with(&url, &token, &dir, None, self.config.insecure_http)?;
        println!("enrolled as machine {} with {}", c.machine_id, c.server);
        Ok(())
    }

    pub(super) fn settings(&mut self) -> anyhow::Result<()> {
        let c = &self.config;
        println!("  1) check-in interval: {} s (until the server gives its own)", c.check_in_seconds);
        println!("  2) apply timeout per process: {} s", c.apply_timeout_seconds);
        println!(
            "  3) catalog directory: {}",
            c.catalog_dir.as_ref().map_or("none".into(), |d| d.display().to_string())
        );
        println!("  reboot policy and maintenance windows are set per deployment on the control plane");
        let choice = self.ask("Change which (number, empty to go back)? ").unwrap_or_default();
        let mut next = self.config.clone();
        match choice.as_str() {
            "1" => next.check_in_seconds = self.ask("Seconds: ").unwrap_or_default().parse()?,
            "2" => next.apply_timeout_seconds = self.ask("Seconds: ").unwrap_or_default().parse()?,
            "3" => {
                let d = self.ask("Directory (empty for none): ").unwrap_or_default();
                next.catalog_dir = (!d.is_empty()).then(|| d.into());
            }
            _ => return Ok(()),
        }
        save(&self.config_path, &next)?;
        self.config = next;
        println!("saved; {}", config_path_note(&self.config_path));
        Ok(())
    }
}

fn quoted(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Writes the configuration (root-only, through a rename) after checking it parses back.
fn save(path: &std::path::Path, c: &Config) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = format!(
        "state_dir = {}\ntrust_dir = {}\nrescan_seconds = {:?}\ncheck_in_seconds = {}\napply_timeout_seconds = {:?}\nretry_max_seconds = {}\nmax_attempts = {}\n",
        quoted(&c.state_dir),
        quoted(&c.trust_dir),
        c.rescan_seconds,
        c.check_in_seconds,
        c.apply_timeout_seconds,
        c.retry_max_seconds,
        c.max_attempts
    );
    if let Some(d) = &c.catalog_dir {
        text.push_str(&format!("catalog_dir = {}\n", quoted(d)));
    }
    if let Some(r) = &c.required_readiness {
        text.push_str(&format!("required_readiness = {r:?}\n"));
    }
    anyhow::ensure!(&Config::parse(path, &text)? == c, "the settings would not read back the same");
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
