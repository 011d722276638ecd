//! Plain `http://` to a control plane on another machine is refused by every
//! command that talks to one (`agent --enroll`, `scan`, the console's
//! enrollment) unless told `--insecure-http`. This machine's own non-loopback
//! address stands in for the other machine: the client judges the URL, so the
//! refusal is the same, and with the flag the exchange really happens.

mod common;

use std::io::Write;
use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};

use common::control_plane::scripted_at;
use common::*;

/// An address of this machine that is not loopback (the route to a test
/// network address; a UDP connect sends nothing).
fn outward_address() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    socket.connect("192.0.2.250:9").expect("a route off loopback (this test needs a network interface)");
    let ip = socket.local_addr().expect("local address").ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "no non-loopback address: {ip}");
    ip
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn enroll_and_scan_refuse_plain_http_off_loopback_unless_told_insecure_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, _script, checkins) = scripted_at(&outward_address().to_string(), vec![]);
    let state = s(&dir.path().join("state"));

    let out = run(&["agent", "--enroll", &base, "token", "--state-dir", &state]);
    assert!(!out.status.success() && stderr(&out).contains("--insecure-http"), "{}", stderr(&out));
    let out = run(&["agent", "--enroll", &base, "token", "--state-dir", &state, "--insecure-http"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Enrolled with a plain-http server elsewhere: scan refuses it the same way.
    let out = run(&["scan", "--state-dir", &state]);
    assert!(!out.status.success(), "scan went over plain http");
    assert!(stderr(&out).contains("--insecure-http") && stderr(&out).contains(&base), "{}", stderr(&out));
    assert!(checkins.try_recv().is_err(), "nothing reached the server without the flag");
    let out = run(&["--json", "scan", "--state-dir", &state, "--insecure-http"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert!(report["catalog"].as_str().is_some_and(|c| c.contains(&base)), "{report}");
    assert!(checkins.try_recv().is_ok(), "the scan checked in");
}

/// The console, its input piped: enrollment (6), a URL and token, then exit (0).
fn console_enroll(config: &str, state: &str, base: &str, extra: &[&str]) -> String {
    let mut child = Command::new(HOTPATCH)
        .args(["console", "--config", config, "--state-dir", state])
        .args(extra)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start console");
    let input = format!("6\n{base}\ntoken\n0\n");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write input");
    let out = child.wait_with_output().expect("console ends at end of input");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_console_enrollment_refuses_plain_http_off_loopback_unless_told_insecure_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (base, _script, _checkins) = scripted_at(&outward_address().to_string(), vec![]);
    let (config, state) = (s(&dir.path().join("absent.toml")), dir.path().join("state"));

    let text = console_enroll(&config, &s(&state), &base, &[]);
    assert!(text.contains("--insecure-http") && !text.contains("enrolled as machine"), "{text}");
    assert!(!state.join("credential.json").exists() && hotpatch_agent::state::load_credential(&state).is_err());

    let text = console_enroll(&config, &s(&state), &base, &["--insecure-http"]);
    assert!(text.contains("enrolled as machine m-test"), "{text}");

    // The configuration's insecure_http does the same without the flag.
    let (config, state) = (dir.path().join("agent.toml"), dir.path().join("state2"));
    write_config(&config, "insecure_http = true\n");
    let text = console_enroll(&s(&config), &s(&state), &base, &[]);
    assert!(text.contains("enrolled as machine m-test"), "{text}");
}
