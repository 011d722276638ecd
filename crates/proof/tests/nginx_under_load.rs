//! Proof under load, short form (issue 13), the multi-process server: the
//! archive's nginx with 4 worker processes is patched and rolled back 10
//! times, in the master and in every worker, by `scripts/proof-under-load
//! --server-kind nginx` while four HTTP/1.1 keep-alive clients check the
//! version every response shows (the fix adds `X-Content-Type-Options:
//! nosniff`). Asserts the same zeros as the redis test, in every process.
//!
//! Runs when `HOTPATCH_PROOF` names `nginx`; needs root, Debian's main
//! archive on first run (source, build dependencies, the binary package, two
//! builds of nginx, kept in /var/tmp/hotpatch-load) and the `hotpatch` binary
//! next to this crate's (`HOTPATCH` overrides).

mod common;

#[test]
fn nginx_patched_in_every_worker_under_load_answers_every_request_right() {
    if !common::wanted("nginx") {
        eprintln!("HOTPATCH_PROOF does not name nginx; HOTPATCH_PROOF=nginx runs it");
        return;
    }
    let report = common::proof_under_load("nginx", 10, 4, &["--threads", "4"]);
    assert_eq!(report["server_kind"], "nginx");
    assert_eq!(report["processes"], 5, "the master and 4 workers: {report:#}");
    // Every response shows its version: normal ones are checked too, so far
    // more answers are checked than crafted requests were sent.
    assert!(
        report["crafted_checked_against_a_completed_switch"].as_u64() > report["crafted_requests"].as_u64(),
        "{report:#}"
    );
}

/// Each fault during transitions, on nginx with 2 workers, 4 cycles: the
/// zeros hold, every process ends untouched with every region accounted for
/// (checked by the harness), and the fault really ran.
#[test]
fn nginx_patched_under_faults_is_fully_patched_or_untouched() {
    if !common::wanted("faults") {
        eprintln!("HOTPATCH_PROOF does not name faults; HOTPATCH_PROOF=faults runs it");
        return;
    }
    for fault in ["threads", "fork-exec", "memory"] {
        let report = common::proof_under_load("nginx", 4, 2, &["--threads", "2", "--fault", fault]);
        assert_eq!(report["fault"], fault);
        let c = &report["fault_counts"];
        let ran = match fault {
            "memory" => c["hog_restarts"].as_u64().unwrap_or(0) + c["memory_limit_hits"].as_u64().unwrap_or(0),
            _ => c["helper_rounds"].as_u64().unwrap_or(0),
        };
        assert!(ran > 0, "the {fault} fault did not run: {report:#}");
    }
    let report = common::proof_under_load("nginx", 6, 2, &["--threads", "2", "--sigstop-every", "2"]);
    assert!(report["pause_with_sigstop"]["transitions"].as_u64() > Some(0), "{report:#}");
}
