//! The daemon against a control plane on loopback (a small stand-in speaking
//! the agent's side of the API): it checks in on the server's interval,
//! downloads and verifies the assigned hotpatch, applies it to every process
//! mapping the target, and reports one result for the deployment naming them.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Reads one HTTP request: the request line and the body.
fn read_request(stream: &TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((line, body))
}

fn respond(mut stream: TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\nContent-Type: application/json\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
}

/// Serves enrollment, check-ins (each body is sent to `checkins`) and the artifact.
fn serve(listener: TcpListener, answer: Value, artifact: Vec<u8>, checkins: Sender<Value>) {
    for stream in listener.incoming().map_while(Result::ok) {
        let Some((line, body)) = read_request(&stream) else { continue };
        if line.starts_with("POST /api/v1/agent/enroll") {
            respond(stream, "200 OK", br#"{"machine_id":"m-test"}"#);
        } else if line.starts_with("POST /api/v1/agent/checkin") {
            let _ = checkins.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
            respond(stream, "200 OK", answer.to_string().as_bytes());
        } else if line.starts_with("GET /api/v1/artifacts/") {
            respond(stream, "200 OK", &artifact);
        } else {
            respond(stream, "404 Not Found", b"{}");
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hotpatch_format::sha256_hex(bytes)
}

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

/// A stand-in control plane assigning `svc-1.hpatch` (level 1 for the fixture's
/// service) as deployment d-1; its address, the check-ins it receives, and the manifest.
fn control_plane(f: &Fixture) -> (String, Receiver<Value>, Value) {
    let pkg = f.path("svc-1.hpatch");
    f.pack(&f.path("svc"), 1, &pkg);
    let bytes = std::fs::read(&pkg).expect("package");
    let inspect = json(&run(&["--json", "inspect", &s(&pkg)]));
    let manifest = if inspect["manifest"].is_object() { inspect["manifest"].clone() } else { inspect };
    let sha = sha256_hex(&bytes);
    let answer = json!({
        "interval_seconds": 1, "jitter_seconds": 1, "entitled": true,
        "hotpatches": [{
            "deployment_id": "d-1", "patch_id": manifest["patch_id"], "build_id": manifest["target"]["build_id"],
            "file_name": "svc", "level": 1, "artifact_sha256": sha, "url": format!("/api/v1/artifacts/{sha}")
        }]
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, checkins) = std::sync::mpsc::channel();
    std::thread::spawn(move || serve(listener, answer, bytes, tx));
    (base, checkins, manifest)
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
