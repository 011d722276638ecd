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

mod common;

#[test]
fn redis_patched_under_load_answers_every_request_right() {
    if !common::wanted("redis") {
        eprintln!("HOTPATCH_PROOF does not name redis; scripts/test runs it");
        return;
    }
    let report = common::proof_under_load("redis", 50, 4, &[]);
    assert_eq!(report["server_kind"], "redis");
}
