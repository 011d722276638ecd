//! `hotpatch agent` as a daemon: runs until SIGTERM, checking in with the
//! control plane on the interval it gives (with jitter), applying each
//! approved hotpatch to every process that maps its target, picking up
//! processes started later by a periodic rescan, and reporting per-process
//! results. SIGHUP reloads the configuration. The journal is repaired at start.

mod events;
mod jobs;
mod scan;
mod server;
pub mod signals;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hotpatch_format::TrustStore;

use crate::config::Config;
use crate::journal::Journal;
use crate::protocol::WorkResult;
use jobs::{Job, ProcessKey};

/// How often the loop wakes to look at signals and timers.
const TICK: Duration = Duration::from_millis(100);
/// Every process is looked at again this often (one that exec'd keeps its pid).
const FULL_RESCAN: Duration = Duration::from_secs(30);
/// An exec'd process that maps no target by its files (it may `dlopen` one)
/// is looked at this long after the event, once its dynamic loader has
/// mapped its libraries (a retry covers a slower one). One that maps a
/// target is caught at its entry point instead (`events`).
const LOADER_SETTLE: Duration = Duration::from_millis(100);
/// The local catalog directory is re-read this often.
const CATALOG_RELOAD: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Command-line values that win over the configuration file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub trust_dir: Option<PathBuf>,
    pub operations_keys: Option<PathBuf>,
    /// `--insecure-http`: only ever turns it on.
    pub insecure_http: bool,
}

impl Overrides {
    fn load(&self, path: &Path, required: bool) -> Result<Config, crate::config::ConfigError> {
        let mut config = Config::load(path, required)?;
        if let Some(d) = &self.state_dir {
            config.state_dir = d.clone();
        }
        if let Some(d) = &self.trust_dir {
            config.trust_dir = d.clone();
        }
        if let Some(d) = &self.operations_keys {
            config.operations_keys = d.clone();
        }
        config.insecure_http |= self.insecure_http;
        Ok(config)
    }
}

pub struct Daemon {
    config_path: PathBuf,
    config_required: bool,
    overrides: Overrides,
    config: Config,
    trust: TrustStore,
    /// Keys that may sign revocations besides the publishers'.
    operations: TrustStore,
    journal: Journal,
    /// By patch id.
    jobs: BTreeMap<String, Job>,
    /// Processes looked at since the last full rescan.
    seen: HashSet<ProcessKey>,
    build_ids: crate::fleet::BuildIds,
    outbox: Vec<WorkResult>,
    /// Exec events from the kernel, and the processes they named, due for a look.
    events: Option<events::ExecEvents>,
    soon: Vec<(Instant, i32)>,
    next_check_in: Instant,
    next_rescan: Instant,
    next_full_rescan: Instant,
    next_catalog: Instant,
}

impl Daemon {
    /// Loads the configuration (checked root-only), the trust directory and the
    /// journal, and repairs what a crash may have left half done.
    pub fn start(config_path: &Path, config_required: bool, overrides: Overrides) -> Result<Daemon, DaemonError> {
        let config = overrides.load(config_path, config_required)?;
        crate::trust::prepare_state_dir(&config.state_dir)?;
        let trust = crate::trust::load_trust(&config.trust_dir)?;
        let operations = crate::trust::load_operations_keys(&config.operations_keys)?;
        crate::trust::check_debug_roots()?;
        let opts = crate::repair::RepairOptions { timeout: config.apply_timeout(), ..Default::default() };
        let repaired = crate::repair::repair(&config.state_dir, &opts);
        tracing::info!(fixed = repaired.fixed(), "journal and processes repaired at start");
        let journal = Journal::open(&config.state_dir)?;
        warn_unready(&config);
        let now = Instant::now();
        Ok(Daemon {
            config_path: config_path.to_path_buf(),
            config_required,
            overrides,
            config,
            trust,
            operations,
            journal,
            jobs: BTreeMap::new(),
            seen: HashSet::new(),
            build_ids: crate::fleet::BuildIds::default(),
            outbox: Vec::new(),
            events: None,
            soon: Vec::new(),
            next_check_in: now,
            next_rescan: now,
            next_full_rescan: now + FULL_RESCAN,
            next_catalog: now,
        })
    }

    /// Runs until SIGTERM or SIGINT; the transition in progress is finished first.
    pub fn run(mut self) -> Result<(), DaemonError> {
        signals::install_all().map_err(DaemonError::Signals)?;
        self.events = events::listen();
        tracing::info!(config = %self.config_path.display(), "agent started");
        while !signals::stop_requested() {
            if signals::take_reload() {
                self.reload();
            }
            let now = Instant::now();
            if now >= self.next_catalog {
                self.load_catalog();
                self.next_catalog = now + CATALOG_RELOAD;
            }
            if now >= self.next_check_in {
                self.check_in();
            }
            if now >= self.next_rescan {
                self.rescan(now >= self.next_full_rescan);
                self.next_rescan = Instant::now() + self.config.rescan();
            }
            self.look_at_new_processes();
            if !self.outbox.is_empty() && self.next_check_in > Instant::now() + Duration::from_secs(2) {
                // Results go to the server soon, not at the next regular check-in.
                self.next_check_in = Instant::now() + Duration::from_secs(1);
            }
            // Woken at once by an exec'd process (held at its entry: patched now).
            self.exec_events(TICK);
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// SIGHUP: a configuration that does not load leaves the running one in place.
    fn reload(&mut self) {
        let loaded =
            self.overrides.load(&self.config_path, self.config_required).map_err(DaemonError::from).and_then(|c| {
                Ok((
                    crate::trust::load_trust(&c.trust_dir)?,
                    crate::trust::load_operations_keys(&c.operations_keys)?,
                    c,
                ))
            });
        match loaded {
            Ok((trust, operations, config)) => {
                if config.state_dir != self.config.state_dir {
                    match crate::trust::prepare_state_dir(&config.state_dir)
                        .map_err(DaemonError::from)
                        .and_then(|()| Ok(Journal::open(&config.state_dir)?))
                    {
                        Ok(j) => self.journal = j,
                        Err(e) => {
                            return tracing::error!(error = %e, "configuration not reloaded: new state_dir unusable");
                        }
                    }
                }
                tracing::info!(config = %self.config_path.display(), "configuration reloaded");
                self.trust = trust;
                self.operations = operations;
                self.config = config;
                self.next_catalog = Instant::now();
                self.next_check_in = Instant::now();
            }
            Err(e) => tracing::error!(error = %e, "configuration not reloaded; keeping the running one"),
        }
    }

    /// The keys signed statements are checked with.
    fn keys(&self) -> crate::guard::Keys {
        crate::guard::Keys { publishers: self.trust.clone(), operations: self.operations.clone() }
    }

    /// Adds a job; a higher level of the same target replaces a lower one.
    fn add_job(&mut self, package: hotpatch_format::VerifiedPackage, deployment: Option<String>) {
        let (id, build, level) =
            (package.manifest.patch_id.clone(), package.manifest.target.build_id.clone(), package.manifest.level);
        if self.jobs.values().any(|j| j.build_id() == build && j.level() > level) {
            return;
        }
        self.jobs.retain(|_, j| j.build_id() != build || j.level() >= level);
        let job = self.jobs.entry(id).or_insert_with(|| Job::new(package));
        if let Some(d) = deployment {
            job.deployments.insert(d);
        }
        // Every process is looked at again for the new work.
        self.seen.clear();
    }

    fn load_catalog(&mut self) {
        let Some(dir) = self.config.catalog_dir.clone() else { return };
        // Keys the publisher's metadata revoked count for local packages too.
        let trust = match crate::guard::machine_keys(&self.config.state_dir, &self.keys()) {
            Ok(keys) => keys.publishers,
            Err(e) => return tracing::error!(error = %e, "catalog directory not read"),
        };
        let catalog = match crate::scan::DirCatalog::load(&dir, &trust) {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "catalog directory unreadable"),
        };
        for p in &catalog.problems {
            tracing::warn!(problem = %p, "catalog package left out");
        }
        let latest: Vec<PathBuf> = catalog.latest().values().map(|e| e.file.clone()).collect();
        for file in latest {
            match crate::scan::catalog::read_verified(&file, &trust) {
                Ok(p) if !self.jobs.contains_key(&p.manifest.patch_id) => {
                    match crate::work::admit(&self.config.state_dir, &p) {
                        Ok(()) => self.add_job(p, None),
                        Err(e) => tracing::warn!(problem = %e, "catalog package left out"),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(problem = %e, "catalog package left out"),
            }
        }
    }
}

/// Says at start what will keep the agent from working: a required readiness
/// check that fails, or nothing to take work from.
fn warn_unready(config: &Config) {
    let paths = crate::readiness::Paths { trust_dir: &config.trust_dir, state_dir: &config.state_dir };
    let readiness = crate::readiness::assess(&paths, &config.readiness_policy());
    for c in readiness.checks.iter().filter(|c| c.required && c.state == crate::readiness::State::Failed) {
        tracing::error!(check = c.name, detail = %c.detail, "required readiness check failed");
    }
    let enrolled = crate::state::load_credential(&config.state_dir).is_ok();
    if !enrolled && config.catalog_dir.is_none() {
        tracing::warn!("not enrolled and no catalog_dir configured: nothing will be applied");
    }
}

/// `hotpatch agent` without a one-shot flag.
pub fn run(config_path: &Path, config_required: bool, overrides: Overrides) -> Result<(), DaemonError> {
    Daemon::start(config_path, config_required, overrides)?.run()
}
