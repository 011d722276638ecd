//! Shared by the under-load tests: runs `scripts/proof-under-load` for one
//! server kind when `HOTPATCH_PROOF` names it, and checks the zero figures.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the comma-separated `HOTPATCH_PROOF` names `kind`.
pub fn wanted(kind: &str) -> bool {
    let wanted = std::env::var("HOTPATCH_PROOF").unwrap_or_default();
    wanted.split(',').any(|w| w.trim() == kind)
}

/// The harness's JSON report of `cycles` cycles against `kind` with `clients`
/// clients, after asserting every zero figure is zero and every apply ran.
pub fn proof_under_load(kind: &str, cycles: u32, clients: u32, extra: &[&str]) -> serde_json::Value {
    let proof = PathBuf::from(env!("CARGO_BIN_EXE_hotpatch-proof"));
    let hotpatch = std::env::var_os("HOTPATCH").map(PathBuf::from).unwrap_or_else(|| proof.with_file_name("hotpatch"));
    assert!(hotpatch.is_file(), "no {}: cargo build -p hotpatch-cli (or set HOTPATCH)", hotpatch.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/proof-under-load");
    let json = std::env::temp_dir().join(format!("hotpatch-proof-test.{kind}.{}.json", std::process::id()));
    let status = Command::new("bash")
        .arg(&script)
        .args(["--server-kind", kind, "--cycles", &cycles.to_string(), "--clients", &clients.to_string()])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .env("HOTPATCH", &hotpatch)
        .env("HOTPATCH_PROOF", &proof)
        // The report is read from --json; stdout would repeat it, series and all.
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run scripts/proof-under-load");
    let report = std::fs::read_to_string(&json).ok();
    let _ = std::fs::remove_file(&json);
    assert!(status.success(), "scripts/proof-under-load --server-kind {kind} failed ({status})");
    let report: serde_json::Value = serde_json::from_str(&report.expect("report written")).expect("report is JSON");
    for zero in
        ["failed", "wrong_version", "control_failed", "transitions_failed", "server_deaths", "region_accounting_errors"]
    {
        assert_eq!(report[zero], 0, "{zero} in {report:#}");
    }
    let generations = report["generations"].as_u64().expect("generations");
    let processes = report["processes"].as_u64().expect("processes");
    assert!(processes >= 1, "{report:#}");
    let sigstopped = report["pause_with_sigstop"]["transitions"].as_u64().unwrap_or(0);
    assert_eq!(
        report["pause_apply"]["transitions"].as_u64().map(|n| n + sigstopped),
        Some((u64::from(cycles) + generations) * processes),
        "every apply ran in every process (the cycles + one per server): {report:#}"
    );
    let marks = report["marks"].as_array().expect("marks");
    assert_eq!(marks.len() as u64, 2 * (u64::from(cycles) + generations), "a mark per switch: {report:#}");
    assert!(!report["series"].as_array().expect("series").is_empty(), "a time series");
    assert!(report["crafted_checked_against_a_completed_switch"].as_u64().unwrap_or(0) > 0, "{report:#}");
    report
}
