//! The processes that map each target, as the agent lists them at check-in
//! (pid, systemd service, applied level), stored with the target (latest
//! check-in only), and each one's state judged against the target's compliance
//! row: a target is reported at its least patched process's level, so the page
//! shows which processes that is.

use serde::{Deserialize, Serialize};

use crate::domain::compliance::{ComplianceRow, Status};

/// At most this many processes per target are kept (a fork-per-connection
/// server can map one library from thousands).
pub const MAX_PER_TARGET: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessFacts {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default)]
    pub applied_level: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_patch_id: Option<String>,
}

/// Refuses a list the page could not show as reported, naming what is wrong.
pub fn check(build_id: &str, list: &[ProcessFacts]) -> Result<(), String> {
    if list.len() > MAX_PER_TARGET {
        return Err(format!("target {build_id}: at most {MAX_PER_TARGET} processes in process_list"));
    }
    for p in list {
        if p.pid == 0 {
            return Err(format!("target {build_id}: process_list has pid 0"));
        }
        if p.unit.as_ref().is_some_and(|u| u.is_empty() || u.len() > 255) {
            return Err(format!("target {build_id}: pid {} unit must be 1-255 characters", p.pid));
        }
        if p.applied_patch_id.as_ref().is_some_and(|id| id.len() > 64) {
            return Err(format!("target {build_id}: pid {} applied_patch_id at most 64 characters", p.pid));
        }
    }
    Ok(())
}

/// The stored form (a JSON array in `machine_targets.process_list`).
pub fn column(list: &[ProcessFacts]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

/// The stored list; an unreadable one (written by nothing but [`column`]) reads as empty.
pub fn from_column(text: &str) -> Vec<ProcessFacts> {
    serde_json::from_str(text).unwrap_or_default()
}

/// One process with its state in words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessState {
    pub pid: u32,
    pub unit: Option<String>,
    pub applied_level: u32,
    /// "patched", "pending", "failed", or the target's own state when the
    /// process has nothing of its own (not-covered, needs-restart, ...).
    pub state: String,
    pub reason: String,
}

/// Each process's state. The target's row is judged at its lowest level, so a
/// process above that level is "patched" even when the target is pending or
/// failed; one below the latest level shares the target's pending or failure.
pub fn judge(list: &[ProcessFacts], row: &ComplianceRow) -> Vec<ProcessState> {
    list.iter()
        .map(|p| {
            let level = i64::from(p.applied_level);
            let (state, reason) = match row.status {
                Status::CheckFailed => ("failed".to_string(), row.detail.clone()),
                Status::ApplyFailed | Status::Pending if level < row.latest_level && level <= row.applied_level => {
                    let word = if row.status == Status::Pending { "pending" } else { "failed" };
                    (word.to_string(), row.detail.clone())
                }
                Status::Pending if level < row.latest_level => {
                    ("pending".to_string(), format!("level {} of {}", level, row.latest_level))
                }
                _ if level > 0 => ("patched".to_string(), format!("level {level}")),
                other => (other.as_str().to_string(), row.detail.clone()),
            };
            ProcessState { pid: p.pid, unit: p.unit.clone(), applied_level: p.applied_level, state, reason }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Status, applied: i64, latest: i64, detail: &str) -> ComplianceRow {
        ComplianceRow {
            machine_id: "m".into(),
            hostname: "h".into(),
            file_name: "libdemo.so.1".into(),
            build_id: "b".into(),
            applied_level: applied,
            latest_level: latest,
            status,
            detail: detail.into(),
            cves_open: vec![],
            cves_fixed: vec![],
        }
    }

    fn procs(levels: &[u32]) -> Vec<ProcessFacts> {
        levels
            .iter()
            .enumerate()
            .map(|(i, l)| ProcessFacts {
                pid: 100 + i as u32,
                unit: Some("demo.service".into()),
                applied_level: *l,
                applied_patch_id: None,
            })
            .collect()
    }

    fn states(list: &[ProcessFacts], r: &ComplianceRow) -> Vec<String> {
        judge(list, r).into_iter().map(|p| format!("{}:{}", p.state, p.reason)).collect()
    }

    #[test]
    fn a_target_pending_for_one_process_shows_the_others_patched() {
        let r = row(Status::Pending, 0, 1, "hotpatch level 1 fixes CVE-1");
        assert_eq!(states(&procs(&[1, 0]), &r), ["patched:level 1", "pending:hotpatch level 1 fixes CVE-1"]);
        let r = row(Status::ApplyFailed, 0, 2, "fix-2: busy");
        assert_eq!(states(&procs(&[2, 0]), &r), ["patched:level 2", "failed:fix-2: busy"]);
        let r = row(Status::CheckFailed, 0, 0, "cannot read maps");
        assert_eq!(states(&procs(&[0]), &r), ["failed:cannot read maps"]);
        let r = row(Status::NotCovered, 0, 0, "no catalog entry");
        assert_eq!(states(&procs(&[0]), &r), ["not-covered:no catalog entry"]);
        let r = row(Status::Pending, 1, 3, "level 3");
        assert_eq!(states(&procs(&[2, 1]), &r), ["pending:level 2 of 3", "pending:level 3"]);
    }

    #[test]
    fn bad_process_lists_are_refused_by_name() {
        let mut list = procs(&[1]);
        assert_eq!(check("b", &list), Ok(()));
        list[0].unit = Some(String::new());
        assert!(check("b", &list).is_err_and(|e| e.contains("pid 100 unit")));
        list[0].unit = None;
        list[0].pid = 0;
        assert!(check("b", &list).is_err_and(|e| e.contains("pid 0")));
        assert_eq!(from_column(&column(&procs(&[2]))), procs(&[2]));
        assert_eq!(from_column("not json"), vec![]);
    }
}
