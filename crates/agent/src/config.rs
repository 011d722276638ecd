//! The daemon's configuration, `/etc/hotpatch/agent.toml`. Every key is
//! optional; unknown keys are refused so a typo does not silently fall back
//! to a default.
//!
//! ```toml
//! state_dir = "/var/lib/hotpatch"
//! trust_dir = "/etc/hotpatch/trusted-keys"
//! # Apply the highest level of each package in this directory (no server needed).
//! catalog_dir = "/var/lib/hotpatch/catalog"
//! rescan_seconds = 1          # look for processes started since the last look
//! check_in_seconds = 300      # until the server says otherwise
//! apply_timeout_seconds = 10  # per process, while a thread is inside a replaced function
//! retry_max_seconds = 300     # back-off ceiling for a process that failed
//! max_attempts = 8            # then its failure is reported as final
//! required_readiness = ["architecture", "privileges"]
//! # Keys of the organisation's operations team (kept off the server): they may
//! # sign revocations, so a rollback the server lists can be carried out.
//! operations_keys = "/etc/hotpatch/operations-keys"
//! insecure_http = false       # allow plain http:// to a server off this machine
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::trust::{DEFAULT_OPERATIONS_KEYS, DEFAULT_STATE_DIR, DEFAULT_TRUST_DIR};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("configuration {path} is malformed: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error(transparent)]
    Unsafe(#[from] crate::trust::TrustError),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub state_dir: PathBuf,
    pub trust_dir: PathBuf,
    pub catalog_dir: Option<PathBuf>,
    pub rescan_seconds: f64,
    pub check_in_seconds: u64,
    pub apply_timeout_seconds: f64,
    pub retry_max_seconds: u64,
    pub max_attempts: u32,
    pub required_readiness: Option<Vec<String>>,
    pub operations_keys: PathBuf,
    pub insecure_http: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            state_dir: DEFAULT_STATE_DIR.into(),
            trust_dir: DEFAULT_TRUST_DIR.into(),
            catalog_dir: None,
            rescan_seconds: 1.0,
            check_in_seconds: 300,
            apply_timeout_seconds: 10.0,
            retry_max_seconds: 300,
            max_attempts: 8,
            required_readiness: None,
            operations_keys: DEFAULT_OPERATIONS_KEYS.into(),
            insecure_http: false,
        }
    }
}

fn seconds(path: &Path, name: &str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v).ok().filter(|d| !d.is_zero()).ok_or_else(|| ConfigError::Malformed {
        path: path.to_path_buf(),
        message: format!("{name} must be a positive number of seconds, not {v}"),
    })
}

impl Config {
    /// Parses the text of a configuration file (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Malformed { path: path.to_path_buf(), message: e.to_string() })?;
        seconds(path, "rescan_seconds", config.rescan_seconds)?;
        seconds(path, "apply_timeout_seconds", config.apply_timeout_seconds)?;
        seconds(path, "check_in_seconds", config.check_in_seconds as f64)?;
        if config.max_attempts == 0 {
            return Err(ConfigError::Malformed {
                path: path.into(),
                message: "max_attempts must be at least 1".into(),
            });
        }
        Ok(config)
    }

    /// Reads `path` after checking that only root could have written it. A
    /// missing file at the default place means the defaults; elsewhere it is an error.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        if !required && !path.exists() {
            return Ok(Config::default());
        }
        crate::trust::check_safe(path, "configuration")?;
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Config::parse(path, &text)
    }

    pub fn rescan(&self) -> Duration {
        Duration::from_secs_f64(self.rescan_seconds.max(0.05))
    }

    pub fn apply_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.apply_timeout_seconds.max(0.001))
    }

    pub fn readiness_policy(&self) -> crate::readiness::Policy {
        match &self.required_readiness {
            Some(required) => crate::readiness::Policy { required: required.clone() },
            None => crate::readiness::Policy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_refusals() {
        let p = Path::new("/etc/hotpatch/agent.toml");
        assert_eq!(Config::parse(p, "").expect("empty"), Config::default());
        let c = Config::parse(p, "rescan_seconds = 0.5\ncatalog_dir = \"/srv/c\"\nmax_attempts = 3\n").expect("parse");
        assert_eq!(
            (c.rescan(), c.catalog_dir.as_deref(), c.max_attempts),
            (Duration::from_millis(500), Some(Path::new("/srv/c")), 3)
        );
        for bad in
            ["rescan_seconds = 0", "rescan_seconds = -1", "max_attempts = 0", "unknown = 1", "state_dir = 3", "[x"]
        {
            let e = Config::parse(p, bad).expect_err(bad).to_string();
            assert!(e.contains("/etc/hotpatch/agent.toml"), "{bad}: {e}");
        }
        let c = Config::parse(p, "operations_keys = \"/etc/ops\"\ninsecure_http = true\n").expect("parse");
        assert_eq!((c.operations_keys.as_path(), c.insecure_http), (Path::new("/etc/ops"), true));
        assert!(!Config::default().insecure_http);
        let policy = Config::parse(p, "required_readiness = [\"architecture\"]").expect("parse").readiness_policy();
        assert_eq!(policy.required, ["architecture"]);
    }
}
