//! A stand-in for the control plane on loopback, speaking the agent's side of
//! the API: enrollment, check-ins (each body handed to the test) and artifacts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender};

use serde_json::{Value, json};

use super::{Fixture, json, run, s};

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

pub fn sha256_hex(bytes: &[u8]) -> String {
    hotpatch_format::sha256_hex(bytes)
}

/// A stand-in control plane assigning `svc-1.hpatch` (level 1 for the fixture's
/// service) as deployment d-1; its address, the check-ins it receives, and the manifest.
pub fn control_plane(f: &Fixture) -> (String, Receiver<Value>, Value) {
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

/// The answer a scripted control plane gives; the test changes it between check-ins.
pub type Script = std::sync::Arc<std::sync::Mutex<Value>>;

/// A control plane on loopback that answers each check-in with whatever the
/// test put in the script last (a server that lies, replays or withholds), and
/// serves the given artifacts by hash; each check-in's body goes to the receiver.
pub fn scripted(artifacts: Vec<Vec<u8>>) -> (String, Script, Receiver<Value>) {
    scripted_at("127.0.0.1", artifacts)
}

/// [`scripted`], listening on `ip` (an address of another interface stands in
/// for a control plane on another machine).
pub fn scripted_at(ip: &str, artifacts: Vec<Vec<u8>>) -> (String, Script, Receiver<Value>) {
    let script: Script = std::sync::Arc::new(std::sync::Mutex::new(json!({
        "interval_seconds": 1, "jitter_seconds": 0, "entitled": true
    })));
    let by_hash: std::collections::HashMap<String, Vec<u8>> =
        artifacts.into_iter().map(|a| (sha256_hex(&a), a)).collect();
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let answers = script.clone();
    let (tx, checkins) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let Some((line, body)) = read_request(&stream) else { continue };
            if line.starts_with("POST /api/v1/agent/enroll") {
                respond(stream, "200 OK", br#"{"machine_id":"m-test"}"#);
            } else if line.starts_with("POST /api/v1/agent/checkin") {
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                let answer = answers.lock().map(|a| a.to_string()).unwrap_or_default();
                respond(stream, "200 OK", answer.as_bytes());
            } else if let Some(a) = line
                .strip_prefix("GET /api/v1/artifacts/")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|sha| by_hash.get(sha))
            {
                respond(stream, "200 OK", a);
            } else {
                respond(stream, "404 Not Found", b"{}");
            }
        }
    });
    (base, script, checkins)
}
