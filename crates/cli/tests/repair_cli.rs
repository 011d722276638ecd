//! `hotpatch repair` on states a tracer killed mid-way could leave: a region
//! mapped but never switched (it is unmapped), sites half switched (the rest
//! are switched), and journal intents without an outcome (closed with what
//! the process shows).

mod common;

use common::*;
use hotpatch_engine::procfs::ProcessMemory;

/// Puts the baseline's bytes back at the site of `symbol`, with the process
/// stopped, as if the switch had never reached it.
fn unswitch(pid: i32, symbol: &str) {
    let h = region_headers(pid).pop().expect("a region");
    let site = h.sites.iter().find(|s| s.symbol == symbol).expect("site");
    let original = hex_decode(&site.original);
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    ProcessMemory::open(pid, true).expect("mem").write(site.address, &original).expect("write");
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

fn apply(f: &Fixture, svc: &Svc, level: u32) {
    let pkg = f.path(&format!("svc-{level}.hpatch"));
    if !pkg.exists() {
        f.pack(&f.path("svc"), level, &pkg);
    }
    let (pid, state) = (svc.pid().to_string(), s(&f.path("state")));
    json(&run(&["--json", "apply", "--pid", &pid, &s(&pkg), "--trust", &f.trust(), "--state-dir", &state]));
}

#[test]
fn repair_unmaps_an_unswitched_region_and_completes_a_half_switch() {
    let f = Fixture::new();
    let state = f.path("state");
    let lone = Svc::start(&f.path("svc"));
    apply(&f, &lone, 1);
    assert!(lone.wait_for(LEVEL1));
    unswitch(lone.pid(), "check");
    assert!(lone.wait_for(UNPATCHED));

    let half = Svc::start(&f.path("svc"));
    apply(&f, &half, 2);
    assert!(half.wait_for(LEVEL2));
    unswitch(half.pid(), "scale");
    assert!(half.wait_for("43043"), "check switched, scale not");

    // Only this test's processes: other tests (and other programs) may be mid-apply.
    let (a, b) = (lone.pid().to_string(), half.pid().to_string());
    let scope = ["--min-age", "0", "--pid", &a, "--pid", &b];
    let report = json(&run(&[&["--json", "repair", "--state-dir", &s(&state)][..], &scope].concat()));
    let action = |pid: i32| {
        report["regions"].as_array().and_then(|r| r.iter().find(|r| r["pid"] == pid)).map(|r| r["action"].clone())
    };
    assert_eq!(action(lone.pid()), Some("unmapped".into()), "{report}");
    assert_eq!(action(half.pid()), Some("completed".into()), "{report}");
    assert!(region_headers(lone.pid()).is_empty(), "the unswitched region is gone");
    assert!(half.wait_for(LEVEL2), "the half switch was completed");
    // Both keep running, and the repaired one can be patched again.
    apply(&f, &lone, 1);
    assert!(lone.wait_for(LEVEL1));
    let again = json(&run(&[&["--json", "repair", "--state-dir", &s(&state)][..], &scope].concat()));
    assert_eq!(again["regions"], serde_json::json!([]), "{again}");
}

#[test]
fn repair_closes_open_journal_intents_from_what_the_processes_show() {
    let f = Fixture::new();
    let state = f.path("state");
    hotpatch_agent::trust::prepare_state_dir(&state).expect("state dir");
    let svc = Svc::start(&f.path("svc"));
    apply(&f, &svc, 1);
    assert!(svc.wait_for(LEVEL1));
    let h = region_headers(svc.pid()).pop().expect("region");
    let untouched = Svc::start(&f.path("svc"));
    let mut gone = std::process::Command::new("true").spawn().expect("spawn");
    let gone_pid = gone.id() as i32;
    let mut j = hotpatch_agent::journal::Journal::open(&state).expect("journal");
    // Intents whose outcome a crash kept from being written.
    let a = j.intent("apply", svc.pid(), &h.record.patch_id, 1, &h.record.build_id).expect("intent");
    let b = j.intent("apply", untouched.pid(), &h.record.patch_id, 1, &h.record.build_id).expect("intent");
    let c = j.intent("apply", gone_pid, &h.record.patch_id, 1, &h.record.build_id).expect("intent");
    drop(j);
    gone.wait().expect("reap");

    let (p1, p2) = (svc.pid().to_string(), untouched.pid().to_string());
    let args = ["--json", "repair", "--state-dir", &s(&state), "--min-age", "0", "--pid", &p1, "--pid", &p2];
    let report = json(&run(&args));
    let finding = |id: u64| {
        report["intents"].as_array().and_then(|i| i.iter().find(|i| i["id"] == id)).map(|i| i["finding"].to_string())
    };
    assert!(finding(a).is_some_and(|f| f.contains("is complete")), "{report}");
    assert!(finding(b).is_some_and(|f| f.contains("untouched")), "{report}");
    assert!(finding(c).is_some_and(|f| f.contains("exited")), "{report}");
    assert_eq!(report["intents"].as_array().map(Vec::len), Some(3), "{report}");
    assert!(hotpatch_agent::journal::open_intents(&state).expect("read").is_empty());
}
