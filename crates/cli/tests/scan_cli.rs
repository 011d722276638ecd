//! `hotpatch scan` against a directory catalog, on real processes: the offer
//! per applied level, untrusted packages left out, and processes that still
//! run a file replaced or deleted on disk.

mod common;

use common::*;
use serde_json::Value;

fn targets_of(report: &Value, pid: i32) -> Vec<&Value> {
    report["targets"]
        .as_array()
        .map(|t| {
            t.iter().filter(|t| t["processes"].as_array().is_some_and(|p| p.iter().any(|p| p["pid"] == pid))).collect()
        })
        .unwrap_or_default()
}

#[test]
fn scan_offers_by_applied_level_and_names_processes_that_need_a_restart() {
    let f = Fixture::new();
    let catalog = f.path("catalog");
    std::fs::create_dir(&catalog).expect("mkdir");
    f.pack(&f.path("svc"), 1, &catalog.join("svc-1.hpatch"));
    // Signed by a key the machine does not trust: left out, and said so.
    let other = Fixture::new();
    other.pack(&f.path("svc"), 2, &catalog.join("untrusted-2.hpatch"));
    std::fs::write(catalog.join("garbage.hpatch"), b"not a package").expect("write");

    let patched = Svc::start(&f.path("svc"));
    let unpatched = Svc::start(&f.path("svc"));
    let pkg = s(&catalog.join("svc-1.hpatch"));
    let state = s(&f.path("state"));
    json(&run(&[
        "--json",
        "apply",
        "--pid",
        &patched.pid().to_string(),
        &pkg,
        "--trust",
        &f.trust(),
        "--state-dir",
        &state,
    ]));
    assert!(patched.wait_for(LEVEL1));

    // A copy whose file is then replaced by another build, and one whose file is deleted.
    std::fs::copy(f.path("svc"), f.path("svc-replaced")).expect("copy");
    std::fs::copy(f.path("svc"), f.path("svc-deleted")).expect("copy");
    let replaced = Svc::start(&f.path("svc-replaced"));
    let deleted = Svc::start(&f.path("svc-deleted"));
    gcc(f.dir.path(), &["-O2", &f.tag(), "-o", "svc-new", "svc.c"]);
    std::fs::rename(f.path("svc-new"), f.path("svc-replaced")).expect("replace");
    std::fs::remove_file(f.path("svc-deleted")).expect("delete");

    let report = json(&run(&["--json", "scan", "--catalog", &s(&catalog), "--trust", &f.trust()]));
    let up = targets_of(&report, patched.pid());
    assert_eq!(up.len(), 1, "{report}");
    assert_eq!((up[0]["status"].as_str(), up[0]["applied_level"].as_u64()), (Some("up-to-date"), Some(1)), "{report}");
    let offer = targets_of(&report, unpatched.pid());
    assert_eq!(offer.len(), 1, "{report}");
    assert_eq!((offer[0]["status"].as_str(), offer[0]["level"].as_u64()), (Some("hotpatch-available"), Some(1)));
    assert!(offer[0]["reason"].as_str().unwrap_or_default().contains("CVE-2026-1234"), "{report}");
    assert_eq!(offer[0]["applied_level"], Value::Null);

    for (svc, change) in [(&replaced, "replaced"), (&deleted, "deleted")] {
        let t = targets_of(&report, svc.pid());
        let restart = t.iter().find(|t| t["status"] == "restart-required").unwrap_or_else(|| panic!("{report}"));
        assert!(restart["reason"].as_str().unwrap_or_default().contains(&svc.pid().to_string()), "{report}");
        let p = report["processes"].as_array().and_then(|p| p.iter().find(|p| p["pid"] == svc.pid())).expect("listed");
        assert_eq!(p["stale"][0]["change"], change, "{p}");
    }
    // The processes of the unreplaced file need no restart.
    let p =
        report["processes"].as_array().and_then(|p| p.iter().find(|p| p["pid"] == unpatched.pid())).expect("listed");
    assert_eq!(p["stale"], serde_json::json!([]));
    let problems = report["problems"].to_string();
    assert!(problems.contains("untrusted-2.hpatch") && problems.contains("garbage.hpatch"), "{problems}");

    // Text for people names the same things.
    let text = run(&["scan", "--catalog", &s(&catalog), "--trust", &f.trust()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("hotpatch level 1 available (no restart)"), "{text}");
    assert!(text.contains(&format!("{} (svc-replaced)", replaced.pid())), "{text}");

    // Without a catalog or enrollment: a clear error.
    let out = run(&["scan", "--state-dir", &s(&f.path("no-state"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--catalog DIR"));
}

#[test]
fn apply_all_patches_every_process_of_the_target_each_on_its_own() {
    let f = Fixture::new();
    let pkg = f.path("svc-1.hpatch");
    f.pack(&f.path("svc"), 1, &pkg);
    let procs: Vec<Svc> = (0..4).map(|_| Svc::start(&f.path("svc"))).collect();
    let state = s(&f.path("state"));
    let results = json(&run(&["--json", "apply", "--all", &s(&pkg), "--trust", &f.trust(), "--state-dir", &state]));
    for svc in &procs {
        let r =
            results.as_array().and_then(|r| r.iter().find(|r| r["pid"] == svc.pid())).expect("a result per process");
        assert_eq!(r["ok"], true, "{results}");
        assert!(svc.wait_for(LEVEL1));
    }
    // Nothing left to do: already at the level.
    let again = json(&run(&["--json", "apply", "--all", &s(&pkg), "--trust", &f.trust(), "--state-dir", &state]));
    assert_eq!(again, serde_json::json!([]));
    let out = run(&["apply", &s(&pkg), "--trust", &f.trust()]);
    assert!(!out.status.success(), "--pid or --all is required");
}
