//! The agent's state directory: the machine key (0600, in a 0700 directory),
//! the last request sequence used, the last answer with its ETag, and results
//! not yet delivered.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::{Answer, WorkResult};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("not enrolled: no machine key in {0}; run with --enroll URL TOKEN first")]
    NotEnrolled(PathBuf),
}

/// What enrollment leaves behind: the server, the machine id it gave, and the
/// machine's secret key (`hotpatch-machine-key-v1 <hex>`), which never leaves
/// this machine.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub server: String,
    pub machine_id: String,
    pub key: String,
    /// The private CA (PEM) the server's certificate must chain to, when the
    /// agent enrolled with `--ca-cert`.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
}

impl Credential {
    pub fn machine_key(&self, dir: &Path) -> Result<hotpatch_wire::MachineKey, StateError> {
        hotpatch_wire::MachineKey::parse(&self.key)
            .map_err(|e| StateError::Corrupt { path: dir.join(CREDENTIAL), message: e.to_string() })
    }
}

// Hand-written so the secret never reaches a log line through `{:?}`.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("server", &self.server)
            .field("machine_id", &self.machine_id)
            .finish_non_exhaustive()
    }
}

const CREDENTIAL: &str = "credential.json";
const LAST_ANSWER: &str = "last-answer.json";
const PENDING: &str = "pending-results.json";
const SEQUENCE: &str = "last-sequence";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))
}

/// Like [`write_private`], and the directory entry is made durable too: what
/// guards against a downgrade must survive a power cut right after it was written.
pub(crate) fn write_durable<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), StateError> {
    write_private(dir, name, &to_json(&dir.join(name), value)?)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt { path: path.to_path_buf(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::Io { path: path.to_path_buf(), source: e }),
    }
}

fn to_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec_pretty(value)
        .map_err(|e| StateError::Corrupt { path: path.to_path_buf(), message: e.to_string() })
}

pub fn save_credential(dir: &Path, c: &Credential) -> Result<(), StateError> {
    write_private(dir, CREDENTIAL, &to_json(&dir.join(CREDENTIAL), c)?)
}

pub fn load_credential(dir: &Path) -> Result<Credential, StateError> {
    read_json(&dir.join(CREDENTIAL))?.ok_or_else(|| StateError::NotEnrolled(dir.to_path_buf()))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LastAnswer {
    pub etag: String,
    pub answer: Answer,
}

pub fn load_last_answer(dir: &Path) -> Result<Option<LastAnswer>, StateError> {
    read_json(&dir.join(LAST_ANSWER))
}

pub fn save_last_answer(dir: &Path, last: &LastAnswer) -> Result<(), StateError> {
    write_private(dir, LAST_ANSWER, &to_json(&dir.join(LAST_ANSWER), last)?)
}

pub fn load_pending(dir: &Path) -> Result<Vec<WorkResult>, StateError> {
    Ok(read_json(&dir.join(PENDING))?.unwrap_or_default())
}

pub fn save_pending(dir: &Path, results: &[WorkResult]) -> Result<(), StateError> {
    write_private(dir, PENDING, &to_json(&dir.join(PENDING), &results)?)
}

/// Takes the next request sequence number and records it before the request
/// goes out, so a crash after sending can never make the agent reuse a number
/// (the server would refuse it as a replay).
pub fn take_sequence(dir: &Path) -> Result<u64, StateError> {
    let path = dir.join(SEQUENCE);
    let last = match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| StateError::Corrupt {
            path: path.clone(),
            message: format!("{:?} is not a number", text.trim()),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(StateError::Io { path, source: e }),
    };
    let now_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let next = hotpatch_wire::next_sequence(last, now_millis);
    write_private(dir, SEQUENCE, next.to_string().as_bytes())?;
    Ok(next)
}

const LAST_CHECKIN: &str = "last-checkin.json";

/// When the agent last tried to check in, and why it failed if it did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastCheckIn {
    /// Unix seconds.
    pub at: u64,
    pub error: Option<String>,
}

impl LastCheckIn {
    pub fn now(error: Option<String>) -> LastCheckIn {
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        LastCheckIn { at, error }
    }

    /// RFC 3339 in UTC, for people.
    pub fn at_text(&self) -> String {
        jiff::Timestamp::from_second(self.at as i64).map(|t| t.to_string()).unwrap_or_else(|_| self.at.to_string())
    }
}

pub fn save_last_checkin(dir: &Path, last: &LastCheckIn) -> Result<(), StateError> {
    write_private(dir, LAST_CHECKIN, &to_json(&dir.join(LAST_CHECKIN), last)?)
}

pub fn load_last_checkin(dir: &Path) -> Result<Option<LastCheckIn>, StateError> {
    read_json(&dir.join(LAST_CHECKIN))
}
