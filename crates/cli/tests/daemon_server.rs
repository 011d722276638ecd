//! The daemon against a control plane on loopback (a small stand-in speaking
//! the agent's side of the API): it checks in on the server's interval,
//! downloads and verifies the assigned hotpatch, applies it to every process
//! mapping the target, and reports one result for the deployment naming them.

mod common;

use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::control_plane::control_plane;
use common::*;
use serde_json::{Value, json};

/// Waits (bounded) for a check-in that reports a result for `deployment`.
fn result_for(checkins: &Receiver<Value>, deployment: &str) -> Option<Value> {
    for _ in 0..120 {
        let body = checkins.recv_timeout(Duration::from_secs(60)).ok()?;
        if let Some(r) = body["results"].as_array().and_then(|r| r.iter().find(|r| r["deployment_id"] == deployment)) {
            return Some(r.clone());
        }
    }
    None
}

#[test]
fn the_daemon_takes_assigned_work_from_the_server_and_reports_every_process() {
    let f = Fixture::new();
    let (base, checkins, manifest) = control_plane(&f);
    let state = f.path("state");
    let enrolled = run(&["agent", "--enroll", &base, "token", "--state-dir", &s(&state)]);
    assert!(enrolled.status.success(), "{}", String::from_utf8_lossy(&enrolled.stderr));
    let procs: Vec<Svc> = (0..3).map(|_| Svc::start(&f.path("svc"))).collect();
    let cfg = f.path("agent.toml");
    write_config(&cfg, &format!("state_dir = {:?}\ntrust_dir = {:?}\nrescan_seconds = 0.2\n", s(&state), f.trust()));
    let agent = Agent::start(&cfg, &f.path("agent.log"));
    for svc in &procs {
        assert!(svc.wait_for(LEVEL1), "process {} not patched; log:\n{}", svc.pid(), agent.log_text());
    }
    let result =
        result_for(&checkins, "d-1").unwrap_or_else(|| panic!("no result reported; log:\n{}", agent.log_text()));
    assert_eq!(result["status"], "applied", "{result}");
    let detail = result["detail"].as_str().unwrap_or_default();
    for svc in &procs {
        assert!(detail.contains(&svc.pid().to_string()), "{detail}");
    }
    // A scan without --catalog asks the control plane: the assigned level is applied everywhere.
    let scanned = json(&run(&["--json", "scan", "--state-dir", &s(&state)]));
    assert!(scanned["catalog"].as_str().is_some_and(|c| c.contains(&base)), "{scanned}");
    let ours: Vec<&Value> = scanned["targets"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["build_id"] == manifest["target"]["build_id"]).collect())
        .unwrap_or_default();
    assert!(!ours.is_empty() && ours.iter().all(|t| t["status"] == "up-to-date"), "{scanned}");
    // It keeps checking in on the server's interval, and readiness sees the last check-in.
    assert!(checkins.recv_timeout(Duration::from_secs(60)).is_ok(), "no further check-in");
    let ready = run(&["--json", "readiness", "--trust", &f.trust(), "--state-dir", &s(&state)]);
    let ready: Value = serde_json::from_slice(&ready.stdout).expect("json");
    let server = ready["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "server")).cloned();
    assert_eq!(server.map(|c| c["state"].clone()), Some(json!("ok")), "{ready}");
}

#[test]
fn one_check_in_applies_to_every_process_and_reports_them() {
    let f = Fixture::new();
    let (base, _checkins, _) = control_plane(&f);
    let state = s(&f.path("state"));
    assert!(run(&["agent", "--enroll", &base, "token", "--state-dir", &state]).status.success());
    let procs: Vec<Svc> = (0..2).map(|_| Svc::start(&f.path("svc"))).collect();
    let outcome = json(&run(&["--json", "agent", "--once", "--state-dir", &state, "--trust", &f.trust()]));
    assert_eq!(outcome["results"][0]["status"], "applied", "{outcome}");
    for p in &procs {
        assert!(
            outcome["results"][0]["detail"].as_str().unwrap_or_default().contains(&p.pid().to_string()),
            "{outcome}"
        );
        assert!(p.wait_for(LEVEL1));
    }
}
