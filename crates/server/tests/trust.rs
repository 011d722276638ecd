//! What an attacker can do with the parts the control plane does not fully trust:
//! a page of another origin in the user's browser, a stolen or revoked credential,
//! idle sockets, a machine's claims, hostile strings. Real server on loopback, real
//! database, real browser where a browser's behaviour is the point.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use hotpatch_format::Classification;
use serde_json::{Value, json};

/// A tiny HTTP server on another loopback port: the attacker's site. It serves
/// `page` at `/` and tells the test each path it was asked for; it ends when the
/// test asks for `/quit`.
fn attacker_site(page: String) -> (String, mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind attacker site");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Drain the headers so the browser sees a well-behaved server.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = if path == "/" { page.as_str() } else { "<html><body>ok</body></html>" };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tx.send(path.clone());
            if path == "/quit" {
                break;
            }
        }
    });
    (base, rx, handle)
}

/// The page of another origin (another port of the same host, so the same
/// "site": a SameSite=Strict cookie goes along). It signs the browser in to
/// the control plane through an image request to a one-time link (standing in
/// for the user having signed in earlier), then posts a form that cancels a
/// deployment; the browser then shows the server's answer.
fn csrf_page(server: &str, link: &str, deployment: &str) -> String {
    format!(
        r#"<html><body>
<form id="f" method="post" action="{server}/api/v1/deployments/{deployment}/cancel"></form>
<script>
var img = new Image();
img.onerror = img.onload = function () {{ document.getElementById('f').submit(); }};
img.src = '{server}{link}';
</script>
</body></html>"#
    )
}

fn deployment_state(s: &TestServer, id: &str) -> String {
    let (st, d) = s.get(&format!("/api/v1/deployments/{id}"), &s.admin);
    assert_eq!(st, 200, "{d}");
    d["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_form_on_another_origin_cannot_cancel_a_deployment_in_a_browser() {
    for b in backends() {
        let s = TestServer::start(&b);
        assert_eq!(s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[])).0, 200);
        let (st, d) =
            s.post("/api/v1/deployments", &s.admin, json!({ "name": "roll", "kind": "hotpatch", "patch_id": "fix-1" }));
        assert_eq!(st, 200, "{d}");
        let id = d["id"].as_str().unwrap_or_default().to_string();
        let (st, link) = s.post("/api/v1/ui-links", &s.admin, json!({}));
        assert_eq!(st, 200, "{link}");
        let link = link["path"].as_str().unwrap_or_default().to_string();
        let (site, seen, handle) = attacker_site(csrf_page(&s.base, &link, &id));
        let dom = dump_dom(&format!("{site}/"));
        let _ = TcpStream::connect(site.trim_start_matches("http://"))
            .and_then(|mut c| c.write_all(b"GET /quit HTTP/1.1\r\n\r\n"));
        handle.join().expect("attacker site");
        let paths: Vec<String> = seen.try_iter().collect();
        assert_eq!(paths.first().map(String::as_str), Some("/"), "{paths:?}");
        // The page ran to its end: the browser signed in and shows the server's answer to the post.
        assert!(dom.contains("\"error\"") || dom.contains("\"state\""), "the post was not answered: {dom}");
        let (_, audit) = s.get("/api/v1/audit", &s.admin);
        assert!(audit.to_string().contains("ui.sign-in"), "the browser never signed in: {audit}");
        assert_eq!(deployment_state(&s, &id), "active", "a cross-origin form cancelled the deployment");
    }
}

/// Sends `request` (a whole HTTP/1.1 request) to the server and returns the status
/// and the raw response.
fn raw(s: &TestServer, request: &str) -> (u16, String) {
    let mut c = TcpStream::connect(s.base.trim_start_matches("http://")).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    c.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out)
}

fn host(s: &TestServer) -> &str {
    s.base.trim_start_matches("http://")
}

/// Signs in through a one-time link and returns the session cookie's value.
fn session_cookie(s: &TestServer, token: &str) -> String {
    let (st, link) = s.post("/api/v1/ui-links", token, json!({}));
    assert_eq!(st, 200, "{link}");
    let path = link["path"].as_str().unwrap_or_default();
    let (st, response) = raw(s, &format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", host(s)));
    assert_eq!(st, 303, "{response}");
    response
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: hp_session="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_string()
}

#[test]
fn the_api_changes_nothing_for_a_session_cookie_and_ui_posts_must_be_same_origin() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let (_, d) =
            s.post("/api/v1/deployments", &s.admin, json!({ "name": "roll", "kind": "hotpatch", "patch_id": "fix-1" }));
        let id = d["id"].as_str().unwrap_or_default().to_string();
        let cookie = session_cookie(&s, &s.admin);
        let h = host(&s);
        // The cookie still reads (the UI links to CSV exports under /api)...
        let (st, out) = raw(
            &s,
            &format!(
                "GET /api/v1/deployments HTTP/1.1\r\nHost: {h}\r\nCookie: hp_session={cookie}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(st, 200, "{out}");
        // ...but changes nothing, even from a client that sends no Origin at all.
        let (st, out) = raw(
            &s,
            &format!(
                "POST /api/v1/deployments/{id}/cancel HTTP/1.1\r\nHost: {h}\r\nCookie: hp_session={cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(st, 401, "{out}");
        assert!(out.contains("Bearer"), "{out}");
        assert_eq!(deployment_state(&s, &id), "active");
        // Cross-origin posts to the UI are refused, by Sec-Fetch-Site or by Origin.
        let token = &s.admin;
        let form = format!("token={token}");
        for extra in [
            "Sec-Fetch-Site: same-site\r\n".to_string(),
            "Origin: http://127.0.0.1:1\r\n".to_string(),
            "Origin: null\r\n".into(),
        ] {
            let (st, out) = raw(
                &s,
                &format!(
                    "POST /ui/login HTTP/1.1\r\nHost: {h}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
                    form.len()
                ),
            );
            assert_eq!(st, 403, "{extra}: {out}");
            assert!(!out.contains("set-cookie"), "{out}");
        }
        // The same post from the server's own origin signs in.
        for extra in [format!("Origin: http://{h}\r\n"), "Sec-Fetch-Site: same-origin\r\n".into(), String::new()] {
            let (st, out) = raw(
                &s,
                &format!(
                    "POST /ui/login HTTP/1.1\r\nHost: {h}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
                    form.len()
                ),
            );
            assert_eq!(st, 303, "{extra}: {out}");
            assert!(out.contains("set-cookie: hp_session="), "{out}");
        }
    }
}

fn with_cookie(s: &TestServer, method: &str, path: &str, cookie: &str) -> u16 {
    let h = host(s);
    raw(
        s,
        &format!("{method} {path} HTTP/1.1\r\nHost: {h}\r\nCookie: hp_session={cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .0
}

/// Signs in by pasting `token` into the sign-in form; returns the session cookie.
fn pasted_session(s: &TestServer, token: &str) -> String {
    let form = format!("token={token}");
    let (st, out) = raw(
        s,
        &format!(
            "POST /ui/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            host(s),
            form.len()
        ),
    );
    assert_eq!(st, 303, "{out}");
    out.lines()
        .find_map(|l| l.strip_prefix("set-cookie: hp_session="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_string()
}

fn delete(s: &TestServer, path: &str, token: &str) -> (u16, Value) {
    let (st, v, _) = call("DELETE", &format!("{}{path}", s.base), Some(token), None);
    (st, v)
}

fn audit_actions(s: &TestServer) -> Vec<String> {
    let (_, a) = s.get("/api/v1/audit", &s.admin);
    a["entries"]
        .as_array()
        .map(|v| v.iter().filter_map(|e| e["action"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[test]
fn revoking_a_token_ends_the_web_sessions_made_from_it() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (st, t) = s.post("/api/v1/tokens", &s.admin, json!({ "label": "laptop" }));
        assert_eq!(st, 200, "{t}");
        let (token, token_id) = (t["token"].as_str().unwrap_or_default(), t["id"].as_str().unwrap_or_default());
        let by_link = session_cookie(&s, token);
        let by_paste = pasted_session(&s, token);
        let other = session_cookie(&s, &s.admin);
        for c in [&by_link, &by_paste, &other] {
            assert_eq!(with_cookie(&s, "GET", "/api/v1/whoami", c), 200);
        }
        let (st, list) = s.get("/api/v1/sessions", &s.admin);
        assert_eq!(st, 200, "{list}");
        let from_token = list["sessions"].as_array().map(|v| v.iter().filter(|x| x["token_id"] == token_id).count());
        assert_eq!(from_token, Some(2), "{list}");
        let (st, r) = delete(&s, &format!("/api/v1/tokens/{token_id}"), &s.admin);
        assert_eq!((st, r["sessions_ended"].as_u64()), (200, Some(2)), "{r}");
        for c in [&by_link, &by_paste] {
            assert_eq!(with_cookie(&s, "GET", "/api/v1/whoami", c), 401);
            assert_eq!(with_cookie(&s, "GET", "/ui/", c), 303, "the UI sends an ended session to sign in");
        }
        // Other sessions live on; one can be listed and ended by itself.
        assert_eq!(with_cookie(&s, "GET", "/api/v1/whoami", &other), 200);
        let (_, list) = s.get("/api/v1/sessions", &s.admin);
        let sessions = list["sessions"].as_array().cloned().unwrap_or_default();
        assert_eq!(sessions.len(), 1, "{list}");
        let id = sessions[0]["id"].as_str().unwrap_or_default();
        assert_eq!(delete(&s, &format!("/api/v1/sessions/{id}"), &s.admin).0, 200);
        assert_eq!(with_cookie(&s, "GET", "/api/v1/whoami", &other), 401);
        // A revoked token no longer makes sign-in links or sessions.
        assert_eq!(s.post("/api/v1/ui-links", token, json!({})).0, 401);
        let actions = audit_actions(&s);
        for want in ["token.revoke", "session.revoke", "ui.sign-in"] {
            assert!(actions.iter().any(|a| a == want), "{want} missing from {actions:?}");
        }
    }
}

#[test]
fn tokens_expire_and_never_outlive_the_credential_that_made_them() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (st, t) = s.post("/api/v1/tokens", &s.admin, json!({ "label": "ci", "expires_in_seconds": 3600 }));
        assert_eq!(st, 200, "{t}");
        let short = t["token"].as_str().unwrap_or_default().to_string();
        let limit = t["expires"].as_str().unwrap_or_default().to_string();
        assert!(!limit.is_empty(), "{t}");
        // A token made by an expiring one ends with it at the latest.
        let (st, child) = s.post("/api/v1/tokens", &short, json!({ "label": "child" }));
        assert_eq!((st, child["expires"].as_str()), (200, Some(limit.as_str())), "{child}");
        let (st, e) = s.post("/api/v1/tokens", &short, json!({ "label": "longer", "expires_in_seconds": 7200 }));
        assert_eq!(st, 400, "{e}");
        assert!(e["error"].as_str().unwrap_or_default().contains("outlive"), "{e}");
        for bad in [0, -5, 10_000 * 86_400] {
            let (st, e) = s.post("/api/v1/tokens", &s.admin, json!({ "label": "x", "expires_in_seconds": bad }));
            assert_eq!(st, 400, "{bad}: {e}");
        }
        // Once its time is up the token and the sessions made from it stop working.
        let cookie = session_cookie(&s, &short);
        assert_eq!(with_cookie(&s, "GET", "/api/v1/whoami", &cookie), 200);
        let id = t["id"].as_str().unwrap_or_default();
        s.sql(&format!("UPDATE api_tokens SET expires = 1000 WHERE id = '{id}'"));
        assert_eq!(s.get("/api/v1/whoami", &short).0, 401);
        assert_eq!(with_cookie(&s, "GET", "/api/v1/whoami", &cookie), 401);
        let (_, list) = s.get("/api/v1/tokens", &s.admin);
        let listed = list["tokens"].as_array().and_then(|v| v.iter().find(|x| x["id"] == id).cloned());
        assert_eq!(listed.map(|x| x["active"].clone()), Some(json!(false)), "{list}");
    }
}

#[test]
fn admins_list_demote_and_remove_users() {
    for b in backends() {
        let s = TestServer::start(&b);
        assert_eq!(s.post("/api/v1/users", &s.admin, json!({ "name": "vera", "role": "operator" })).0, 200);
        let (_, t) = s.post("/api/v1/tokens", &s.admin, json!({ "label": "vera", "user": "vera" }));
        let vera = t["token"].as_str().unwrap_or_default().to_string();
        assert_eq!(s.post("/api/v1/enrollment-tokens", &vera, json!({})).0, 200);
        // Only admins manage users, and the last admin stays.
        assert_eq!(s.put("/api/v1/users/vera", &vera, json!({ "role": "admin" })).0, 403);
        let (st, e) = s.put("/api/v1/users/root", &s.admin, json!({ "role": "viewer" }));
        assert_eq!(st, 409, "{e}");
        assert_eq!(delete(&s, "/api/v1/users/root", &s.admin).0, 409);
        assert_eq!(s.put("/api/v1/users/nobody", &s.admin, json!({ "role": "viewer" })).0, 404);
        // Demoted: the next request has the new role.
        let (st, r) = s.put("/api/v1/users/vera", &s.admin, json!({ "role": "viewer" }));
        assert_eq!((st, r["role"].as_str()), (200, Some("viewer")), "{r}");
        assert_eq!(s.post("/api/v1/enrollment-tokens", &vera, json!({})).0, 403);
        // A non-admin sees only their own tokens and sessions.
        let (_, mine) = s.get("/api/v1/tokens", &vera);
        assert_eq!(mine["tokens"].as_array().map(Vec::len), Some(1), "{mine}");
        let (_, all) = s.get("/api/v1/tokens", &s.admin);
        assert_eq!(all["tokens"].as_array().map(Vec::len), Some(2), "{all}");
        // Removed: tokens and sessions end at once, the name stays taken.
        let cookie = session_cookie(&s, &vera);
        let (st, r) = delete(&s, "/api/v1/users/vera", &s.admin);
        assert_eq!((st, r["tokens_revoked"].as_u64(), r["sessions_ended"].as_u64()), (200, Some(1), Some(1)), "{r}");
        assert_eq!(s.get("/api/v1/whoami", &vera).0, 401);
        assert_eq!(with_cookie(&s, "GET", "/api/v1/whoami", &cookie), 401);
        let (_, users) = s.get("/api/v1/users", &s.admin);
        let v = users["users"].as_array().and_then(|u| u.iter().find(|x| x["name"] == "vera").cloned());
        assert!(v.is_some_and(|v| v["removed"].is_string()), "{users}");
        assert_eq!(s.post("/api/v1/tokens", &s.admin, json!({ "label": "x", "user": "vera" })).0, 404);
        let actions = audit_actions(&s);
        for want in ["user.role", "user.remove"] {
            assert!(actions.iter().any(|a| a == want), "{want} missing from {actions:?}");
        }
    }
}

mod slow_clients {
    use super::common::server_process::ServerProcess;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// The real binary with short timeouts, under an open-file limit of `nofile`,
    /// with no cap per address (every test client is on 127.0.0.1).
    fn server(dir: &tempfile::TempDir, nofile: u32) -> ServerProcess {
        let data = dir.path().display().to_string();
        let args = [
            "--data",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--header-timeout",
            "2",
            "--body-timeout",
            "2",
            "--max-connections-per-address",
            "100000",
        ];
        ServerProcess::start_with_open_files(nofile, args)
    }

    /// A connection to `addr` from the loopback address `from` (e.g. 127.0.0.2).
    fn connect_from(from: [u8; 4], addr: &str) -> TcpStream {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        let local = std::net::SocketAddr::from((from, 0));
        socket.bind(&local.into()).expect("bind the client to another loopback address");
        let target: std::net::SocketAddr = addr.parse().expect("server address");
        socket.connect(&target.into()).expect("connect");
        let c: TcpStream = socket.into();
        c.set_read_timeout(Some(Duration::from_secs(90))).expect("read timeout");
        c
    }

    #[test]
    fn one_address_cannot_take_every_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().display().to_string();
        // Idle connections are not timed out during this test: only the cap per address helps.
        let args = ["--data", &data, "--listen", "127.0.0.1:0", "--header-timeout", "3600"];
        let s = ServerProcess::start(args.iter().copied().chain([
            "--max-connections",
            "30",
            "--max-connections-per-address",
            "20",
        ]));
        let held: Vec<TcpStream> = (0..20).map(|_| connect_from([127, 0, 0, 2], &s.addr)).collect();
        // Beyond its share the address is told so at once.
        let mut refused: Vec<TcpStream> = (0..20).map(|_| connect_from([127, 0, 0, 2], &s.addr)).collect();
        for c in &mut refused {
            let (status, body) = read_answer(c);
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("too many connections from this address"), "{body}");
        }
        // Everyone else still gets in.
        let mut c = connect(&s.addr);
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
        assert_eq!(read_response(&mut c), 200, "{}", s.log_text());
        drop(held);
    }

    fn connect(addr: &str) -> TcpStream {
        let c = TcpStream::connect(addr).expect("connect");
        // A watchdog for a server that never answers, not a measure of speed.
        c.set_read_timeout(Some(Duration::from_secs(90))).expect("read timeout");
        c
    }

    /// Reads one response (whose body is `Content-Length` long) from `c`; the status.
    fn read_response(c: &mut TcpStream) -> u16 {
        read_answer(c).0
    }

    /// Reads one response from `c`: the status and the body.
    fn read_answer(c: &mut TcpStream) -> (u16, String) {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match c.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                other => panic!("response cut short ({other:?}): {}", String::from_utf8_lossy(&buf)),
            }
        }
        let head = String::from_utf8_lossy(&buf).to_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        c.read_exact(&mut body).expect("body");
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn more_idle_sockets_than_the_open_file_limit_do_not_lock_others_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = server(&dir, 256);
        // More idle connections than the server has descriptors: none sends a byte.
        let idle: Vec<TcpStream> = (0..300).map(|_| connect(&s.addr)).collect();
        let mut c = connect(&s.addr);
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
        assert_eq!(read_response(&mut c), 200, "{}", s.log_text());
        drop(idle);
        assert!(s.log_text().contains("connection cap reached"), "{}", s.log_text());
    }

    #[test]
    fn idle_keep_alive_and_stalled_bodies_are_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = server(&dir, 1024);
        // Kept alive after an answer, then idle: the server closes it.
        let mut c = connect(&s.addr);
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        assert_eq!(read_response(&mut c), 200);
        let mut rest = Vec::new();
        let closed = c.read_to_end(&mut rest);
        assert!(matches!(closed, Ok(0)), "an idle kept-alive connection stayed open: {closed:?}");
        // A body that stops halfway: the request fails with a 4xx, the connection closes.
        let mut c = connect(&s.addr);
        let head = format!(
            "POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"label\":",
            s.admin
        );
        c.write_all(head.as_bytes()).expect("send");
        let (status, body) = read_answer(&mut c);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("nothing received"), "{body}");
        // The same for a package upload, whose body is read raw.
        let mut c = connect(&s.addr);
        let head = format!(
            "POST /api/v1/hotpatches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nHPATCH",
            s.admin
        );
        c.write_all(head.as_bytes()).expect("send");
        let (status, body) = read_answer(&mut c);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("\"error\"") && body.contains("nothing received"), "{body}");
        // A head that never ends: closed without an answer (or with a 408).
        let mut c = connect(&s.addr);
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("send");
        let mut out = Vec::new();
        let ended = c.read_to_end(&mut out);
        assert!(ended.is_ok(), "{ended:?}");
        assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&out));
    }
}

#[test]
fn a_machine_reports_only_on_deployments_that_reach_it_and_cores_are_bounded() {
    for b in backends() {
        let s = TestServer::start(&b);
        s.upload(&s.admin, &package(&s.key, "fix-1", BUILD_A, 1, Classification::Security, &[]));
        let (st, d) = s.post(
            "/api/v1/deployments",
            &s.admin,
            json!({ "name": "web", "kind": "hotpatch", "patch_id": "fix-1", "scope": { "tags": ["web"] },
                    "rings": { "canary_percent": 100, "failure_threshold_percent": 10 } }),
        );
        assert_eq!(st, 200, "{d}");
        let id = d["id"].as_str().unwrap_or_default();
        let (_, web) = s.enroll(&["web"], "web-1");
        let (_, db) = s.enroll(&["db"], "db-1");
        let failed = json!([{ "deployment_id": id, "status": "failed", "detail": "forged" }]);
        // The database machine is not in the rollout: its "failure" is ignored (and
        // said so) and halts nothing; the rest of its check-in counts.
        let (st, a) = s.post(
            "/api/v1/agent/checkin",
            &db,
            checkin_body("db-1", 4, &[(BUILD_A, "libdemo.so.1", 0)], failed.clone()),
        );
        assert_eq!(st, 200, "{a}");
        assert!(a["notes"].to_string().contains("does not reach this machine"), "{a}");
        assert_eq!(deployment_state(&s, id), "active");
        let (_, machines) = s.get("/api/v1/machines", &s.admin);
        assert!(machines.to_string().contains("\"cores\":4"), "the check-in counted: {machines}");
        let (_, m) = s.get("/api/v1/compliance/machines", &s.admin);
        assert!(!m.to_string().contains("apply-failed"), "{m}");
        // Its own machine's failure counts.
        let (st, e) =
            s.post("/api/v1/agent/checkin", &web, checkin_body("web-1", 4, &[(BUILD_A, "libdemo.so.1", 0)], failed));
        assert_eq!(st, 200, "{e}");
        assert_eq!(deployment_state(&s, id), "halted");

        // Cores: bounded, and a jump is flagged for the operator.
        let big = |n| checkin_body("web-1", n, &[(BUILD_A, "libdemo.so.1", 0)], json!([]));
        let (st, e) = s.post("/api/v1/agent/checkin", &web, big(65_536));
        assert_eq!(st, 400, "{e}");
        assert!(e["error"].as_str().unwrap_or_default().contains("4096"), "{e}");
        assert_eq!(s.post("/api/v1/agent/checkin", &web, big(4096)).0, 200);
        let (_, bill) = s.get("/api/v1/billing", &s.admin);
        assert!(!bill.to_string().contains("65536"), "{bill}");
        let actions = audit_actions(&s);
        assert!(actions.iter().any(|a| a == "machine.cores-jump"), "{actions:?}");
    }
}

#[test]
fn nul_characters_are_a_clear_400_on_every_database() {
    for b in backends() {
        let s = TestServer::start(&b);
        let (_, cred) = s.enroll(&[], "m-1");
        let posts = [
            ("/api/v1/tokens", json!({ "label": "a\u{0}b" })),
            ("/api/v1/queries", json!({ "name": "q", "query": "hostname:\u{0}" })),
            ("/api/v1/deployments", json!({ "name": "d\u{0}", "kind": "hotpatch", "patch_id": "x" })),
            ("/api/v1/enrollment-tokens", json!({ "tags": ["\u{0}"] })),
            (
                "/api/v1/baselines",
                json!({ "name": "b\u{0}", "product": "p", "released": "2027-01-01T00:00:00Z", "targets": [] }),
            ),
        ];
        for (path, body) in posts {
            let (st, e) = s.post(path, &s.admin, body);
            assert_eq!(st, 400, "{path}: {e}");
            assert!(e["error"].as_str().unwrap_or_default().contains("NUL"), "{path}: {e}");
        }
        let body = checkin_body("m\u{0}", 2, &[], json!([]));
        let (st, e) = s.post("/api/v1/agent/checkin", &cred, body);
        assert_eq!(st, 400, "{e}");
        for path in [
            "/api/v1/machines/%00",
            "/api/v1/queries/a%00",
            "/api/v1/billing/invoices/2026-%000",
            "/api/v1/audit?limit=%00",
        ] {
            let (st, e) = s.get(path, &s.admin);
            assert_eq!(st, 400, "{path}: {e}");
        }
        let (st, e) = delete(&s, "/api/v1/tokens/x%00", &s.admin);
        assert_eq!(st, 400, "{e}");
        // Any other way in is a 400 too, never a 500 (PostgreSQL refuses NUL in text).
        if matches!(b, Backend::Postgres(_)) {
            let err = s
                .rt()
                .block_on(sqlx::query("SELECT $1 = 'x'").bind("a\u{0}b").execute(&s.state.db.pool))
                .expect_err("PostgreSQL refuses NUL in text");
            let e = hotpatch_server::error::ApiError::Database(err);
            assert_eq!(e.status().as_u16(), 400, "{e}");
        }
    }
}

#[test]
fn hostile_link_targets_months_and_csv_cells_are_handled() {
    for b in backends() {
        let s = TestServer::start(&b);
        // A control character in `next`: the link signs in to the overview instead of failing.
        let (_, link) = s.post("/api/v1/ui-links", &s.admin, json!({}));
        let path = link["path"].as_str().unwrap_or_default();
        let (st, out) = raw(
            &s,
            &format!(
                "GET {path}?next=/ui/%0d%0aSet-Cookie:%20x=1 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                host(&s)
            ),
        );
        assert_eq!(st, 303, "{out}");
        assert!(out.contains("location: /ui/\r\n"), "{out}");
        // A month must be YYYY-MM in digits.
        for month in ["2026-+9", "+026-09", "2026-%209"] {
            let (st, e) = s.get(&format!("/api/v1/billing/invoices/{month}"), &s.admin);
            assert_eq!(st, 400, "{month}: {e}");
        }
        // CSV cells that a spreadsheet would run are defused.
        for (i, host) in ["\t=1+1", "\r=1+1", "＝1+1", "@SUM(1)"].iter().enumerate() {
            let (_, cred) = s.enroll(&[], &format!("h{i}"));
            let (st, e) = s.post(
                "/api/v1/agent/checkin",
                &cred,
                checkin_body(host, 2, &[(BUILD_A, "libdemo.so.1", 0)], json!([])),
            );
            assert_eq!(st, 200, "{e}");
        }
        let csv = ureq::get(&format!("{}/api/v1/compliance/machines?format=csv", s.base))
            .set("Authorization", &format!("Bearer {}", s.admin))
            .call()
            .expect("csv")
            .into_string()
            .expect("csv text");
        let cells: Vec<&str> = csv.split([',', '\n']).map(|c| c.trim_start_matches('"')).collect();
        for bad in ["\t=", "\r=", "＝", "@"] {
            assert!(!cells.iter().any(|c| c.starts_with(bad)), "a cell starts with {bad:?}: {csv:?}");
        }
        assert!(csv.contains("'＝1+1"), "{csv:?}");
    }
}

#[test]
fn the_database_and_its_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("new").join("data");
    let data_arg = data.display().to_string();
    let server = common::server_process::ServerProcess::start(["--data", &data_arg, "--listen", "127.0.0.1:0"]);
    assert_eq!(mode(&data), 0o700);
    for file in ["hotpatch.db", "hotpatch.db-wal", "hotpatch.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    drop(server);
    // A database an earlier version left readable to all is narrowed at the next start.
    let old = dir.path().join("old");
    std::fs::create_dir(&old).expect("mkdir");
    let db = old.join("hotpatch.db");
    std::fs::write(&db, b"").expect("empty database");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let old_arg = old.display().to_string();
    let server = common::server_process::ServerProcess::start(["--data", &old_arg, "--listen", "127.0.0.1:0"]);
    assert_eq!(mode(&db), 0o600, "{}", server.log_text());
}
