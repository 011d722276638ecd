//! What a killed `hotpatch apply` or `hotpatch rollback` leaves that
//! `hotpatch repair` must finish: a region's memfd left open, a rollback
//! killed among or after its site writes, an upgrade killed before the
//! replaced level's retirement mark. A region that was ever reachable is
//! retired (left mapped), never unmapped.

mod common;

use common::*;
use hotpatch_engine::procfs::ProcessMemory;
use hotpatch_engine::region::RegionHeader;

/// Writes `bytes` at `address` with the process stopped.
fn poke(pid: i32, address: u64, bytes: &[u8]) {
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    ProcessMemory::open(pid, true).expect("mem").write(address, bytes).expect("write");
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

/// Puts the baseline's bytes back at the sites of `symbols` of the only live
/// region, as a rollback's site writes would.
fn restore_sites(pid: i32, symbols: &[&str]) -> RegionHeader {
    let h = region_headers(pid).into_iter().find(|h| h.record.retired.is_none()).expect("a live region");
    for site in h.sites.iter().filter(|s| symbols.contains(&s.symbol.as_str())) {
        poke(pid, site.address, &hex_decode(&site.original));
    }
    h
}

fn apply(f: &Fixture, svc: &Svc, level: u32) {
    let pkg = f.path(&format!("svc-{level}.hpatch"));
    if !pkg.exists() {
        f.pack(&f.path("svc"), level, &pkg);
    }
    let (pid, state) = (svc.pid().to_string(), s(&f.path("state")));
    json(&run(&["--json", "apply", "--pid", &pid, &s(&pkg), "--trust", &f.trust(), "--state-dir", &state]));
}

fn repair(f: &Fixture, pid: i32) -> serde_json::Value {
    let state = s(&f.path("state"));
    json(&run(&["--json", "repair", "--state-dir", &state, "--min-age", "0", "--pid", &pid.to_string()]))
}

/// A rollback's intent in the journal, as `hotpatch rollback` writes it before touching the process.
fn rollback_intent(f: &Fixture, pid: i32, h: &RegionHeader) {
    let state = f.path("state");
    hotpatch_agent::trust::prepare_state_dir(&state).expect("state dir");
    let mut j = hotpatch_agent::journal::Journal::open(&state).expect("journal");
    j.intent("rollback", pid, &h.record.patch_id, 0, &h.record.build_id).expect("intent");
}

fn actions(report: &serde_json::Value) -> Vec<String> {
    let regions = report["regions"].as_array().expect("regions");
    regions.iter().map(|r| r["action"].as_str().unwrap_or_default().to_string()).collect()
}

fn memfds_open(pid: i32) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list descriptors");
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("/memfd:hotpatch:"))
        .count()
}

// Killed as it starts the mmap that follows memfd_create: the memfd's
// descriptor is open in the target and only the apply's own close (never
// reached) would have closed it. Repair closes it (it used to wait for the
// next apply).
#[test]
fn repair_closes_the_region_memfd_an_apply_killed_before_its_close_left_open() {
    let f = Fixture::new();
    let pkg = f.path("svc-2.hpatch");
    f.pack(&f.path("svc"), 2, &pkg);
    let mut svc = Svc::start(&f.path("svc"));
    let (pid, state) = (svc.pid().to_string(), s(&f.path("state")));
    let mut left_open = 0;
    // The kill races the rest of the apply (a few syscalls): tried until it lands.
    for _ in 0..20 {
        let mmap = format!("nr={}", libc::SYS_mmap);
        apply_killed_after(&f, &pid, &pkg, &state, "hotpatch_engine::inject=debug", |mut log| {
            log.find(|l: &String| l.contains("injecting a syscall") && l.contains(&mmap))
        });
        let open = memfds_open(svc.pid());
        let report = repair(&f, svc.pid());
        assert_eq!(report["errors"], serde_json::json!([]), "{report}");
        if open > 0 {
            left_open += 1;
            assert!(actions(&report).contains(&"closed".to_string()), "{report}");
            assert_eq!(memfds_open(svc.pid()), 0, "repair left a region memfd open: {report}");
            break;
        }
        if region_headers(svc.pid()).iter().any(|h| h.record.retired.is_none()) {
            json(&run(&["--json", "rollback", "--pid", &pid, "--state-dir", &state]));
        }
    }
    assert_eq!(left_open, 1, "no kill landed between memfd_create and close in 20 tries");
    // No live region is left that nothing leads to, and the process lives on.
    assert!(region_headers(svc.pid()).iter().all(|h| h.record.retired.is_some()));
    assert!(matches!(svc.child.try_wait(), Ok(None)), "the process ended");
}

// A rollback killed after writing its sites, before its retirement mark: the
// region is unreachable now but was reachable (a suspended stack may return
// into it). Repair marks it retired and leaves it mapped; it used to unmap it.
#[test]
fn repair_retires_a_region_a_rollback_killed_before_its_mark_left_unmarked() {
    let f = Fixture::new();
    let svc = Svc::start(&f.path("svc"));
    apply(&f, &svc, 2);
    assert!(svc.wait_for(LEVEL2));
    let h = restore_sites(svc.pid(), &["check", "scale"]);
    rollback_intent(&f, svc.pid(), &h);
    assert!(svc.wait_for(UNPATCHED));

    let report = repair(&f, svc.pid());
    assert_eq!(actions(&report), vec!["retired"], "{report}");
    let after = region_headers(svc.pid());
    assert_eq!(after.len(), 1, "the region stays mapped");
    let retired = after[0].record.retired.expect("marked retired");
    assert_eq!(retired.replaced_by_level, None, "retired by a rollback");
    assert!(report["intents"][0]["finding"].as_str().is_some_and(|f| f.contains("complete")), "{report}");
    // Applied again as usual afterwards.
    apply(&f, &svc, 2);
    assert!(svc.wait_for(LEVEL2));
}

// A rollback killed between its two site writes: repair finishes the
// rollback the journal asked for (it used to switch the restored site back).
#[test]
fn repair_finishes_a_rollback_killed_among_its_site_writes() {
    let f = Fixture::new();
    let svc = Svc::start(&f.path("svc"));
    apply(&f, &svc, 2);
    assert!(svc.wait_for(LEVEL2));
    let h = restore_sites(svc.pid(), &["check"]);
    rollback_intent(&f, svc.pid(), &h);
    assert!(svc.wait_for("42045"), "check restored, scale still patched");

    let report = repair(&f, svc.pid());
    assert_eq!(actions(&report), vec!["rolled back"], "{report}");
    assert!(svc.wait_for(UNPATCHED), "every site restored");
    let after = region_headers(svc.pid());
    assert_eq!(after.len(), 1);
    assert!(after[0].record.retired.is_some_and(|r| r.replaced_by_level.is_none()), "{:?}", after[0].record);
}

// An upgrade killed after switching level 2's sites but before level 1's
// retirement mark: level 1 is unreachable and unmarked. Repair marks it
// retired by level 2 (it used to unmap it).
#[test]
fn repair_retires_the_level_an_upgrade_killed_before_its_mark_replaced() {
    let f = Fixture::new();
    let svc = Svc::start(&f.path("svc"));
    apply(&f, &svc, 1);
    assert!(svc.wait_for(LEVEL1));
    apply(&f, &svc, 2);
    assert!(svc.wait_for(LEVEL2));
    // Level 1's header as it was before its mark.
    let old = region_headers(svc.pid()).into_iter().find(|h| h.record.level == 1).expect("level 1");
    let mut unmarked = old.clone();
    unmarked.record.retired = None;
    poke(svc.pid(), old.record.region_start, &unmarked.encode());

    let report = repair(&f, svc.pid());
    assert_eq!(actions(&report), vec!["retired"], "{report}");
    let after = region_headers(svc.pid());
    assert_eq!(after.len(), 2, "both regions stay mapped");
    let one = after.iter().find(|h| h.record.level == 1).expect("level 1");
    assert_eq!(one.record.retired.and_then(|r| r.replaced_by_level), Some(2));
    let two = after.iter().find(|h| h.record.level == 2).expect("level 2");
    assert!(two.record.retired.is_none(), "level 2 stays applied");
}

// `hotpatch rollback` writes its intent before and its outcome after.
#[test]
fn rollback_is_journaled_like_apply() {
    let f = Fixture::new();
    let svc = Svc::start(&f.path("svc"));
    apply(&f, &svc, 1);
    assert!(svc.wait_for(LEVEL1));
    let state = f.path("state");
    json(&run(&["--json", "rollback", "--pid", &svc.pid().to_string(), "--state-dir", &s(&state)]));
    assert!(svc.wait_for(UNPATCHED));
    let events = hotpatch_agent::journal::read_events(&state).expect("journal");
    let text = serde_json::to_string(&events).expect("json");
    assert!(text.contains("\"rollback\""), "no rollback intent: {text}");
    assert!(hotpatch_agent::journal::open_intents(&state).expect("read").is_empty(), "{text}");
}
