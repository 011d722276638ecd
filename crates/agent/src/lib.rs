//! `hotpatch-agent` owns the machine side of the control plane: enrolling with a
//! one-time token, and checking in (machine facts, the targets of running
//! processes with their applied levels, results of past work), then doing what
//! the answer says: download each assigned hotpatch, verify it against the
//! agent's own trusted keys, apply it with the engine to every process mapping
//! its target, and report the result; and what the machine holds against its
//! own server (`guard`): signed catalog metadata, the level floor, signed rollbacks.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod facts;
pub mod fleet;
pub mod guard;
pub mod journal;
pub mod lock;
pub mod protocol;
pub mod readiness;
pub mod repair;
pub mod scan;
pub mod state;
#[cfg(test)]
mod test_support;
pub mod trust;
pub mod work;

use std::path::Path;

pub use client::{Client, ClientError};
pub use state::{Credential, StateError};
pub use work::{CheckInOutcome, check_in_once};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot make a machine key: {0}")]
    Key(String),
}

/// Makes this machine's key pair and enrolls its public half with a one-time
/// enrollment token; the secret key is stored 0600 in `state_dir` and never sent.
pub fn enroll(server: &str, token: &str, state_dir: &Path, ca_cert: Option<&Path>) -> Result<Credential, AgentError> {
    enroll_with(server, token, state_dir, ca_cert, false)
}

/// [`enroll`]; `insecure_http` allows plain `http://` to a server off this machine.
pub fn enroll_with(
    server: &str,
    token: &str,
    state_dir: &Path,
    ca_cert: Option<&Path>,
    insecure_http: bool,
) -> Result<Credential, AgentError> {
    let client = Client::with_options(server, ca_cert, insecure_http)?;
    let hostname = facts::hostname();
    let key = hotpatch_wire::MachineKey::generate().map_err(|e| AgentError::Key(e.to_string()))?;
    let answer = client.enroll(token, &hostname, &key.public().to_hex())?;
    let credential = Credential {
        server: client.base().to_string(),
        machine_id: answer.machine_id,
        key: key.to_text(),
        ca_cert: ca_cert.map(Path::to_path_buf),
    };
    state::save_credential(state_dir, &credential)?;
    Ok(credential)
}

pub use trust::load_trust;
