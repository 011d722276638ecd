//! Where the machine side keeps what it trusts, and the check that nobody but
//! root could have put it there.
//!
//! One trust directory serves every command (`hotpatch apply`, the agent,
//! `scan`): [`DEFAULT_TRUST_DIR`]. A file the agent acts on (a trusted key, its
//! configuration, its state) that another user could have written would let
//! that user choose what code runs inside every process, so such a file is
//! refused and named.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hotpatch_format::TrustStore;

/// The publisher keys (`*.pub`) this machine trusts.
pub const DEFAULT_TRUST_DIR: &str = "/etc/hotpatch/trusted-keys";
/// The organisation's operations keys (`*.pub`): they sign revocations only.
/// Optional: a machine without them honours publisher-signed revocations alone.
pub const DEFAULT_OPERATIONS_KEYS: &str = "/etc/hotpatch/operations-keys";
/// The agent's machine key, request sequence, last answer and journal.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hotpatch";
/// The daemon's configuration.
pub const DEFAULT_CONFIG: &str = "/etc/hotpatch/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{what} {path} does not exist{hint}")]
    Missing { what: &'static str, path: PathBuf, hint: &'static str },
    #[error("cannot read {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is owned by uid {uid}, not root; refusing to trust it")]
    NotRootOwned { what: &'static str, path: PathBuf, uid: u32 },
    #[error("{what} {path} is writable by {by} (mode {mode:04o}); refusing to trust it (chmod go-w)")]
    Writable { what: &'static str, path: PathBuf, by: &'static str, mode: u32 },
    #[error("trust directory {0} holds no publisher key (*.pub); add the publisher's key there")]
    Empty(PathBuf),
    #[error("trusted key in {path}: {message}")]
    Key { path: PathBuf, message: String },
}

const TRUST_HINT: &str = "; create it (root-owned, mode 0755) and copy the publisher's .pub key into it";

/// Refuses `path` unless it is owned by root and neither group- nor
/// world-writable. Symbolic links are followed: what counts is the file read.
pub fn check_safe(path: &Path, what: &'static str) -> Result<(), TrustError> {
    let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TrustError::Missing { what, path: path.to_path_buf(), hint: "" },
        _ => TrustError::Io { what, path: path.to_path_buf(), source },
    })?;
    check_meta(path, what, &meta)
}

fn check_meta(path: &Path, what: &'static str, meta: &std::fs::Metadata) -> Result<(), TrustError> {
    if meta.uid() != 0 {
        return Err(TrustError::NotRootOwned { what, path: path.to_path_buf(), uid: meta.uid() });
    }
    let mode = meta.mode() & 0o7777;
    let by = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => "everyone",
        (true, false) => "its group",
        (false, false) => return Ok(()),
    };
    Err(TrustError::Writable { what, path: path.to_path_buf(), by, mode })
}

/// Loads the publisher keys of a trust directory (or a single `.pub` file)
/// after checking that root alone could have written the directory and each key.
/// A missing or empty directory is an error naming it: trusting nothing by
/// accident would make every hotpatch fail later with a less helpful message.
pub fn load_trust(path: &Path) -> Result<TrustStore, TrustError> {
    const WHAT: &str = "trust directory";
    let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TrustError::Missing { what: WHAT, path: path.to_path_buf(), hint: TRUST_HINT },
        _ => TrustError::Io { what: WHAT, path: path.to_path_buf(), source },
    })?;
    if !meta.is_dir() {
        check_meta(path, "trusted key", &meta)?;
        return TrustStore::load(path).map_err(|e| key_error(path, e));
    }
    check_meta(path, WHAT, &meta)?;
    let entries = std::fs::read_dir(path).map_err(|source| TrustError::Io { what: WHAT, path: path.into(), source })?;
    let mut keys = 0usize;
    for entry in entries {
        let file = entry.map_err(|source| TrustError::Io { what: WHAT, path: path.into(), source })?.path();
        if file.extension().is_some_and(|e| e == "pub") {
            check_safe(&file, "trusted key")?;
            keys += 1;
        }
    }
    if keys == 0 {
        return Err(TrustError::Empty(path.to_path_buf()));
    }
    TrustStore::load(path).map_err(|e| key_error(path, e))
}

/// The operations keys: none when `path` does not exist, else checked like the
/// trust directory (root's alone, each key too).
pub fn load_operations_keys(path: &Path) -> Result<TrustStore, TrustError> {
    if !path.exists() {
        return Ok(TrustStore::default());
    }
    match load_trust(path) {
        Err(TrustError::Empty(_)) => Ok(TrustStore::default()),
        other => other,
    }
}

fn key_error(path: &Path, e: hotpatch_format::KeyError) -> TrustError {
    match e {
        hotpatch_format::KeyError::NoKeys(p) => TrustError::Empty(p),
        other => TrustError::Key { path: path.to_path_buf(), message: other.to_string() },
    }
}

/// The state directory, created 0700 if missing, refused if another user could write it.
pub fn prepare_state_dir(path: &Path) -> Result<(), TrustError> {
    use std::os::unix::fs::DirBuilderExt;
    if !path.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|source| TrustError::Io {
            what: "state directory",
            path: path.into(),
            source,
        })?;
    }
    check_safe(path, "state directory")
}

/// Every debug root the engine would read symbols from (`HOTPATCH_DEBUG_DIRS`,
/// then `/usr/lib/debug`) that exists must be root's alone: a debug file names
/// the addresses where jumps are written.
pub fn check_debug_roots() -> Result<(), TrustError> {
    for root in hotpatch_engine::debug_roots().into_iter().filter(|r| r.exists()) {
        check_safe(&root, "debug root")?;
    }
    Ok(())
}
