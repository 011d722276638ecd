//! Proof under load, short form (issue 13), second server: the archive's
//! memcached (4 worker threads) is patched and rolled back 20 times by
//! `scripts/proof-under-load --server-kind memcached` while four clients
//! check every answer (set/get of their own keys; a get of a 220-byte key the
//! fix refuses). Asserts the same zeros as the redis test.
//!
//! Runs when `HOTPATCH_PROOF` names `memcached` (e.g. `redis,memcached`);
//! needs root, Debian's main archive on first run (source, build dependencies,
//! the binary package, two builds of memcached, kept in /var/tmp/hotpatch-load)
//! and the `hotpatch` binary next to this crate's (`HOTPATCH` overrides).

mod common;

#[test]
fn memcached_patched_under_load_answers_every_request_right() {
    if !common::wanted("memcached") {
        eprintln!("HOTPATCH_PROOF does not name memcached; HOTPATCH_PROOF=redis,memcached runs it");
        return;
    }
    let report = common::proof_under_load("memcached", 20, 4, &["--threads", "4"]);
    assert_eq!(report["server_kind"], "memcached");
    assert_eq!(report["threads"], 4);
}
