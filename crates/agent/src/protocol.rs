//! The wire format of enrollment and check-in, as the server documents it in
//! `/openapi.json`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Serialize)]
pub struct EnrollRequest<'a> {
    pub token: &'a str,
    pub hostname: &'a str,
    pub public_key: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct EnrollAnswer {
    pub machine_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Facts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cores: u32,
    pub readiness: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetReport {
    pub build_id: String,
    pub file_name: String,
    pub processes: u32,
    pub applied_patch_id: Option<String>,
    pub applied_level: u32,
    pub error: Option<String>,
    /// Each process mapping the target; servers before it was added have no
    /// such field, so it is left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process_list: Vec<ProcessReport>,
}

/// One process that maps a target, as the machine page lists it; the server
/// judges its state (patched, pending, failed) against the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessReport {
    pub pid: i32,
    /// The systemd service the process belongs to, when it runs under one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub applied_level: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_patch_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkResult {
    pub deployment_id: String,
    /// "applied", "rolled-back" or "failed".
    pub status: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct CheckIn<'a> {
    pub facts: &'a Facts,
    pub targets: &'a [TargetReport],
    pub results: &'a [WorkResult],
    /// Publishers whose newest signed catalog metadata has expired here.
    /// Left out when none, so a server that predates it still takes the check-in.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub catalogs_stale: &'a [StaleCatalog],
}

/// "Catalog stale since DATE" for one publisher (its anchor key id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StaleCatalog {
    pub publisher: String,
    pub since: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Answer {
    pub interval_seconds: u64,
    pub jitter_seconds: u64,
    pub entitled: bool,
    #[serde(default)]
    pub hotpatches: Vec<HotpatchWork>,
    #[serde(default)]
    pub baselines: Vec<BaselineWork>,
    #[serde(default)]
    pub rollbacks: Vec<RollbackWork>,
    #[serde(default)]
    pub notes: Vec<String>,
    /// The publisher's signed catalog metadata, passed on by the server.
    #[serde(default)]
    pub catalog: Option<Box<hotpatch_format::SignedDocument>>,
    /// Signed revocation statements, passed on by the server; a listed rollback
    /// is carried out only when one of them revokes the level running.
    #[serde(default)]
    pub revocations: Vec<hotpatch_format::SignedDocument>,
    /// Each publisher's latest catalog metadata (`catalog` is one of them, for older agents).
    #[serde(default)]
    pub catalogs: Vec<hotpatch_format::SignedDocument>,
    /// Publishers' keys documents (key rotation), each followed from the trust directory's anchors.
    #[serde(default)]
    pub keys: Vec<hotpatch_format::SignedDocument>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HotpatchWork {
    pub deployment_id: String,
    pub patch_id: String,
    pub build_id: String,
    pub file_name: String,
    pub level: u32,
    pub artifact_sha256: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineWork {
    pub deployment_id: String,
    pub baseline: String,
    pub file_names: Vec<String>,
    pub restart: bool,
    pub reboot_policy: String,
    pub reason: String,
    pub window: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackWork {
    pub deployment_id: String,
    pub patch_id: String,
    pub build_id: String,
}
