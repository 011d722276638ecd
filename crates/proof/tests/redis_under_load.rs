//! Proof under load, short form (issue 13): the archive's redis-server is
//! patched and rolled back 50 times by `scripts/proof-under-load` while four
//! clients check every answer. Asserts 0 failed requests, 0 answers of the
//! wrong version, 0 failed transitions; latency and throughput are reported,
//! not asserted (the machine is shared and noisy).
//!
//! Runs when `HOTPATCH_PROOF` names `redis` (scripts/test sets it); needs root,
//! Debian's main archive on first run (source, build dependencies, two builds
//! of redis, kept in /var/tmp/hotpatch-load) and the `hotpatch` binary next to
//! this crate's (`cargo test --workspace` builds it; `HOTPATCH` overrides).

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn redis_patched_under_load_answers_every_request_right() {
    let wanted = std::env::var("HOTPATCH_PROOF").unwrap_or_default();
    if !wanted.split(',').any(|w| w.trim() == "redis") {
        eprintln!("HOTPATCH_PROOF does not name redis; scripts/test runs it");
        return;
    }
    let proof = PathBuf::from(env!("CARGO_BIN_EXE_hotpatch-proof"));
    let hotpatch = std::env::var_os("HOTPATCH").map(PathBuf::from).unwrap_or_else(|| proof.with_file_name("hotpatch"));
    assert!(hotpatch.is_file(), "no {}: cargo build -p hotpatch-cli (or set HOTPATCH)", hotpatch.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/proof-under-load");
    let json = std::env::temp_dir().join(format!("hotpatch-proof-test.{}.json", std::process::id()));
    let status = Command::new("bash")
        .arg(&script)
        .args(["--cycles", "50", "--json"])
        .arg(&json)
        .env("HOTPATCH", &hotpatch)
        .env("HOTPATCH_PROOF", &proof)
        .status()
        .expect("run scripts/proof-under-load");
    let report = std::fs::read_to_string(&json).ok();
    let _ = std::fs::remove_file(&json);
    assert!(status.success(), "scripts/proof-under-load failed ({status})");
    let report: serde_json::Value = serde_json::from_str(&report.expect("report written")).expect("report is JSON");
    for zero in
        ["failed", "wrong_version", "control_failed", "transitions_failed", "server_deaths", "region_accounting_errors"]
    {
        assert_eq!(report[zero], 0, "{zero} in {report:#}");
    }
    assert_eq!(report["pause_apply"]["transitions"], 50 + 4, "every apply ran (50 cycles + one per server)");
    assert!(report["crafted_checked_against_a_completed_switch"].as_u64().unwrap() > 0, "{report:#}");
}
