//! HTTPS as the real `hotpatch-server` binary serves it (rustls, ring), with a
//! self-signed certificate that `openssl` makes for each test: a client that trusts
//! the certificate gets answers, one that does not fails the handshake, plain HTTP
//! to the TLS port gets no HTTP answer, the web session cookie is `Secure` exactly
//! when the server serves TLS, and a bad certificate or key stops the start.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::server_process::{ServerProcess, run_to_exit};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Generous: a request on a busy shared machine, not a speed assertion.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A self-signed certificate for 127.0.0.1 and localhost; returns (cert, key) PEM files.
/// `CA:FALSE`: the certificate is the server's own (end-entity) certificate, which
/// webpki refuses to accept when it claims to be a CA, as `openssl req -x509` makes by default.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (scripts/setup installs it)");
    assert!(out.status.success(), "openssl failed: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// An HTTPS client that trusts exactly the certificates in `root` and follows no redirects.
fn client_trusting(root: &Path) -> ureq::Agent {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).expect("read root PEM") {
        roots.add(cert.expect("root certificate")).expect("add root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    ureq::AgentBuilder::new().tls_config(Arc::new(config)).redirects(0).timeout(CLIENT_TIMEOUT).build()
}

fn plain_client() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).timeout(CLIENT_TIMEOUT).build()
}

fn start_server(data: &Path, tls: Option<(&Path, &Path)>) -> ServerProcess {
    let mut args = vec!["--data".into(), data.as_os_str().to_owned(), "--listen".into(), "127.0.0.1:0".into()];
    if let Some((cert, key)) = tls {
        args.extend(["--tls-cert".into(), cert.as_os_str().to_owned(), "--tls-key".into(), key.as_os_str().to_owned()]);
    }
    ServerProcess::start(args)
}

/// A status >= 400 is still an answer; an error is a transport error (connection, TLS), as text.
fn answer(result: Result<ureq::Response, ureq::Error>) -> Result<ureq::Response, String> {
    match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => Ok(r),
        Err(ureq::Error::Transport(t)) => Err(t.to_string()),
    }
}

/// Signs a browser in with the API token and out again; returns both Set-Cookie values.
fn sign_in_and_out(agent: &ureq::Agent, base: &str, token: &str) -> (String, String) {
    let r = answer(agent.post(&format!("{base}/ui/login")).send_form(&[("token", token)])).expect("sign in");
    assert_eq!(r.status(), 303, "sign-in should redirect to the UI");
    let cookie = r.header("Set-Cookie").expect("sign-in sets the session cookie").to_string();
    let session = cookie.split(';').next().unwrap_or_default().to_string();
    assert!(session.starts_with("hp_session=hps_"), "{cookie}");
    let r = answer(agent.get(&format!("{base}/ui/")).set("Cookie", &session).call()).expect("overview");
    assert_eq!(r.status(), 200, "the session cookie signs the browser in");
    let r = answer(agent.get(&format!("{base}/ui/logout")).set("Cookie", &session).call()).expect("sign out");
    assert_eq!(r.status(), 303);
    let cleared = r.header("Set-Cookie").expect("sign-out clears the cookie").to_string();
    assert!(cleared.starts_with("hp_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    (cookie, cleared)
}

#[test]
fn https_answers_clients_that_trust_the_certificate_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path(), "server");
    let (other_cert, _) = self_signed(dir.path(), "other");
    let server = start_server(&dir.path().join("data"), Some((&cert, &key)));
    let base = format!("https://{}", server.addr);

    let trusting = client_trusting(&cert);
    let whoami = || {
        answer(
            trusting
                .get(&format!("{base}/api/v1/whoami"))
                .set("Authorization", &format!("Bearer {}", server.admin))
                .call(),
        )
    };
    let r = whoami().expect("HTTPS call with the trusted certificate");
    assert_eq!(r.status(), 200);
    let me: serde_json::Value = r.into_json().expect("whoami JSON");
    assert_eq!(me["user"], "admin", "{me}");

    // A client trusting another certificate refuses the server's in the handshake.
    let stranger = client_trusting(&other_cert);
    match answer(stranger.get(&format!("{base}/healthz")).call()) {
        Ok(r) => panic!("a client that does not trust the certificate got HTTP {}", r.status()),
        Err(text) => {
            assert!(text.to_lowercase().contains("certificate"), "expected a certificate error, got: {text}");
        }
    }

    // Plain HTTP to the TLS port: the server never answers in HTTP.
    let mut tcp = TcpStream::connect(&server.addr).expect("connect to the TLS port");
    tcp.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("read timeout");
    tcp.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.addr).as_bytes())
        .expect("send plain HTTP");
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply); // EOF, a reset or a TLS alert; never HTTP
    assert!(!reply.starts_with(b"HTTP/"), "plain HTTP got an HTTP answer: {}", String::from_utf8_lossy(&reply));

    // The failed handshakes did not hurt the server.
    assert_eq!(whoami().expect("HTTPS call after failed handshakes").status(), 200);

    // The web session cookie is Secure over TLS, at sign-in and at sign-out.
    let (cookie, cleared) = sign_in_and_out(&trusting, &base, &server.admin);
    for c in [&cookie, &cleared] {
        assert!(c.contains("; Secure") && c.contains("HttpOnly") && c.contains("SameSite=Strict"), "{c}");
    }
}

#[test]
fn plain_http_on_loopback_sets_no_secure_cookie() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(&dir.path().join("data"), None);
    let (cookie, cleared) = sign_in_and_out(&plain_client(), &format!("http://{}", server.addr), &server.admin);
    for c in [&cookie, &cleared] {
        // Over plain HTTP a browser would drop a Secure cookie, and sign-in would never stick.
        assert!(!c.contains("Secure") && c.contains("HttpOnly") && c.contains("SameSite=Strict"), "{c}");
    }
}

/// Behind a proxy that terminates TLS the server speaks plain HTTP, and
/// `--secure-cookies` still marks the session cookie Secure.
#[test]
fn secure_cookies_flag_marks_cookies_behind_a_tls_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let args: Vec<std::ffi::OsString> = vec![
        "--data".into(),
        data.as_os_str().to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--secure-cookies".into(),
    ];
    let server = ServerProcess::start(args);
    let base = format!("http://{}", server.addr);
    let r = answer(plain_client().post(&format!("{base}/ui/login")).send_form(&[("token", &server.admin)]))
        .expect("sign in");
    let cookie = r.header("Set-Cookie").expect("session cookie").to_string();
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");
}

#[test]
fn a_bad_certificate_or_key_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path(), "good");
    let (_, other_key) = self_signed(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("write garbage");
    let missing = dir.path().join("missing.pem");
    let cases: [(&str, &Path, &Path, Vec<&Path>); 5] = [
        ("garbage certificate", &garbage, &key, vec![&garbage]),
        ("missing certificate", &missing, &key, vec![&missing]),
        ("key file as certificate", &key, &key, vec![&key]),
        ("garbage key", &cert, &garbage, vec![&garbage]),
        ("key of another certificate", &cert, &other_key, vec![&cert, &other_key]),
    ];
    for (case, c, k, named) in cases {
        let data = dir.path().join(format!("data-{}", case.replace(' ', "-")));
        let (status, log) = run_to_exit([
            OsStr::new("--data"),
            data.as_os_str(),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
            OsStr::new("--tls-cert"),
            c.as_os_str(),
            OsStr::new("--tls-key"),
            k.as_os_str(),
        ]);
        assert!(!status.success(), "{case}: the server started anyway:\n{log}");
        for file in named {
            assert!(
                log.contains(&file.display().to_string()),
                "{case}: the error does not name {}:\n{log}",
                file.display()
            );
        }
        assert!(!log.contains("listening"), "{case}: the server listened:\n{log}");
        // Refused before anything was created: no database, no first-start admin.
        assert!(!data.join("hotpatch.db").exists(), "{case}: a database was created");
    }
}

/// The agent reaches a TLS server whose certificate only its `--ca-cert` file
/// vouches for: enrollment and signed check-ins work, and the file is
/// remembered. Without it, enrollment fails on the certificate, and stores nothing.
#[test]
fn the_agent_enrolls_and_checks_in_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path(), "server");
    let server = start_server(&dir.path().join("data"), Some((&cert, &key)));
    let base = format!("https://{}", server.addr);
    let admin = client_trusting(&cert);
    let token = || -> String {
        let r = answer(
            admin
                .post(&format!("{base}/api/v1/enrollment-tokens"))
                .set("Authorization", &format!("Bearer {}", server.admin))
                .send_json(serde_json::json!({})),
        )
        .expect("enrollment token");
        let v: serde_json::Value = r.into_json().expect("JSON");
        v["token"].as_str().expect("token").to_string()
    };

    let refused_dir = dir.path().join("refused");
    let e = hotpatch_agent::enroll(&base, &token(), &refused_dir, None).expect_err("public roots do not vouch");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert!(!refused_dir.join("credential.json").exists(), "a failed enrollment stores nothing");

    let state_dir = dir.path().join("agent");
    let cred = hotpatch_agent::enroll(&base, &token(), &state_dir, Some(&cert)).expect("enroll with --ca-cert");
    assert_eq!(cred.ca_cert.as_deref(), Some(cert.as_path()));
    let trust = hotpatch_format::TrustStore::from_keys(Vec::new());
    let outcome = hotpatch_agent::check_in_once(&state_dir, &trust).expect("signed check-in over TLS");
    assert_eq!(outcome.machine_id, cred.machine_id);
    let again = hotpatch_agent::check_in_once(&state_dir, &trust).expect("second check-in");
    assert!(again.not_modified || again.results.is_empty(), "{again:?}");
}
