//! Test harness: a real server on 127.0.0.1:0 over a real database (a fresh
//! SQLite file, or a fresh schema in the PostgreSQL named by
//! HOTPATCH_TEST_POSTGRES_URL), and a real HTTP client.

#![allow(dead_code)]

pub mod browser;
pub mod server_process;

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use hotpatch_format::{Classification, FunctionPatch, Machine, Manifest, Package, SecretKey, Target, TrustStore};
use serde_json::Value;
use sqlx::Connection;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

/// SQLite always; PostgreSQL too when the test script provides one.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    match std::env::var("HOTPATCH_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => v.push(Backend::Postgres(url)),
        _ => eprintln!("HOTPATCH_TEST_POSTGRES_URL unset: PostgreSQL skipped, SQLite only"),
    }
    v
}

pub struct TestServer {
    pub base: String,
    pub admin: String,
    pub db_url: String,
    pub key: SecretKey,
    pub state: hotpatch_server::AppState,
    rt: Option<Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
    pg_cleanup: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).expect("randomness");
    hex::encode(b)
}

pub fn test_key() -> SecretKey {
    SecretKey::from_seed([7u8; 32])
}

impl TestServer {
    pub fn start(backend: &Backend) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let (db_url, pg_cleanup) = match backend {
            Backend::Sqlite => (format!("sqlite://{}?mode=rwc", dir.path().join("hotpatch.db").display()), None),
            Backend::Postgres(url) => {
                let schema = format!("t_{}", random_hex(8));
                rt.block_on(async {
                    let mut c = sqlx::PgConnection::connect(url).await.expect("connect to HOTPATCH_TEST_POSTGRES_URL");
                    sqlx::Executor::execute(&mut c, format!("CREATE SCHEMA {schema}").as_str())
                        .await
                        .expect("create schema");
                });
                let sep = if url.contains('?') { '&' } else { '?' };
                (format!("{url}{sep}options=-c%20search_path%3D{schema}"), Some((url.clone(), schema)))
            }
        };
        let mut server = Self::start_on(rt, &db_url, dir);
        server.pg_cleanup = pg_cleanup;
        let created = server
            .rt()
            .block_on(hotpatch_server::bootstrap::create_admin(
                &server.state.db,
                "acme",
                "root",
                Some(hotpatch_server::util::now() + 86_400 * 30),
            ))
            .expect("bootstrap admin");
        server.admin = created.token;
        server
    }

    /// A second replica over the same database.
    pub fn replica(&self) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let mut r = Self::start_on(rt, &self.db_url, tempfile::tempdir().expect("tempdir"));
        r.admin = self.admin.clone();
        r
    }

    fn start_on(rt: Runtime, db_url: &str, dir: tempfile::TempDir) -> TestServer {
        let key = test_key();
        let trust = TrustStore::from_keys(vec![key.public()]);
        let state = rt.block_on(hotpatch_server::open(db_url, trust, 8)).expect("open database");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let app = hotpatch_server::router(state.clone());
        rt.spawn(async move {
            let _ = hotpatch_server::serve::serve(listener, None, app, async {
                let _ = rx.await;
            })
            .await;
        });
        TestServer {
            base: format!("http://{addr}"),
            admin: String::new(),
            db_url: db_url.to_string(),
            key,
            state,
            rt: Some(rt),
            shutdown: Some(tx),
            pg_cleanup: None,
            _dir: dir,
        }
    }

    pub fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("runtime alive")
    }

    /// Another organisation with its own admin; returns the admin's token.
    pub fn create_org(&self, org: &str, trial_days: Option<i64>) -> String {
        let trial = trial_days.map(|d| hotpatch_server::util::now() + d * 86_400);
        self.rt()
            .block_on(hotpatch_server::bootstrap::create_admin(&self.state.db, org, "root", trial))
            .expect("create org")
            .token
    }

    /// Runs raw SQL against the server's database (test setup of clocks in the past).
    pub fn sql(&self, statement: &str) {
        self.rt().block_on(sqlx::query(statement).execute(&self.state.db.pool)).expect("sql");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let (Some(rt), Some((url, schema))) = (self.rt.as_ref(), self.pg_cleanup.take()) {
            rt.block_on(async {
                self.state.db.pool.close().await;
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::Executor::execute(&mut c, format!("DROP SCHEMA {schema} CASCADE").as_str()).await;
                }
            });
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// What tests pass as a machine's "token": the machine id and its key seed, so
/// that `call` can sign the request as the agent does.
pub fn machine_credential(machine_id: &str, key: &hotpatch_wire::MachineKey) -> String {
    let seed = key.to_text();
    let seed = seed.rsplit(' ').next().unwrap_or_default();
    format!("machine:{machine_id}:{seed}")
}

/// Sequence numbers for signed test requests: one counter for all machines, so
/// each machine's numbers rise.
pub fn next_test_sequence() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let _ = SEQ.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
}

/// Adds the machine-signature headers to a request for `url` with `body`.
pub fn sign_request(req: ureq::Request, credential: &str, url: &str, body: &[u8]) -> ureq::Request {
    let mut fields = credential.splitn(3, ':').skip(1);
    let (id, seed) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
    let key = hotpatch_wire::MachineKey::parse(&format!("hotpatch-machine-key-v1 {seed}")).expect("test machine key");
    let sig = key.sign(req.method(), hotpatch_wire::signed_path(url), id, next_test_sequence(), body);
    sig.headers().iter().fold(req, |r, (name, value)| r.set(name, value))
}

/// One HTTP call; returns the status and the JSON body (Null when empty or not JSON).
/// A token made by `machine_credential` signs the request as that machine.
pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value, Option<String>) {
    let mut req = ureq::request(method, url);
    let bytes = body.map(|b| serde_json::to_vec(b).expect("json"));
    match token {
        Some(t) if t.starts_with("machine:") => {
            req = sign_request(req, t, url, bytes.as_deref().unwrap_or_default());
        }
        Some(t) => req = req.set("Authorization", &format!("Bearer {t}")),
        None => {}
    }
    let res = match bytes {
        Some(b) => req.set("Content-Type", "application/json").send_bytes(&b),
        None => req.call(),
    };
    let response = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = response.status();
    let etag = response.header("ETag").map(str::to_string);
    let text = response.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), etag)
}

impl TestServer {
    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (s, v, _) = call("GET", &format!("{}{path}", self.base), Some(token), None);
        (s, v)
    }
    pub fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = call("POST", &format!("{}{path}", self.base), Some(token), Some(&body));
        (s, v)
    }
    pub fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let (s, v, _) = call("PUT", &format!("{}{path}", self.base), Some(token), Some(&body));
        (s, v)
    }
    pub fn upload(&self, token: &str, bytes: &[u8]) -> (u16, Value) {
        let r = ureq::post(&format!("{}/api/v1/hotpatches", self.base))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes);
        let r = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("upload: {e}"),
        };
        let s = r.status();
        (s, serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or(Value::Null))
    }

    /// Creates an enrollment token and enrolls a machine; returns (machine_id, credential).
    pub fn enroll(&self, tags: &[&str], hostname: &str) -> (String, String) {
        let (s, v) = self.post("/api/v1/enrollment-tokens", &self.admin, serde_json::json!({ "tags": tags }));
        assert_eq!(s, 200, "{v}");
        self.enroll_with(v["token"].as_str().expect("token"), hostname).expect("enroll")
    }

    /// Enrolls a fresh machine key with `token`; Err carries the refusal.
    pub fn enroll_with(&self, token: &str, hostname: &str) -> Result<(String, String), (u16, Value)> {
        let key = hotpatch_wire::MachineKey::generate().expect("machine key");
        let (s, v) = self.post(
            "/api/v1/agent/enroll",
            "",
            serde_json::json!({ "token": token, "hostname": hostname, "public_key": key.public().to_hex() }),
        );
        if s != 200 {
            return Err((s, v));
        }
        let id = v["machine_id"].as_str().expect("id").to_string();
        let cred = machine_credential(&id, &key);
        Ok((id, cred))
    }
}

/// A check-in body for a machine running `targets` = [(build_id, file_name, applied_level)].
pub fn checkin_body(hostname: &str, cores: u32, targets: &[(&str, &str, u32)], results: Value) -> Value {
    let targets: Vec<Value> = targets
        .iter()
        .map(|(b, f, l)| {
            serde_json::json!({ "build_id": b, "file_name": f, "processes": 1, "applied_level": l,
                "applied_patch_id": if *l > 0 { Some(format!("p-{l}")) } else { None } })
        })
        .collect();
    serde_json::json!({
        "facts": { "hostname": hostname, "os": "Debian GNU/Linux 12", "kernel": "6.1.0", "arch": "x86_64", "cores": cores, "readiness": { "ready": true } },
        "targets": targets,
        "results": results,
    })
}

/// A tiny relocatable x86-64 object, compiled once per test binary with the system C compiler.
pub fn payload() -> &'static [u8] {
    static PAYLOAD: OnceLock<Vec<u8>> = OnceLock::new();
    PAYLOAD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let src: PathBuf = dir.path().join("fix.c");
        let obj = dir.path().join("fix.o");
        std::fs::File::create(&src)
            .and_then(|mut f| f.write_all(b"int checked_len(int n) { return n < 0 ? 0 : (n > 4096 ? 4096 : n); }\n"))
            .expect("write source");
        let status = std::process::Command::new("cc")
            .args(["-c", "-O2", "-ffunction-sections", "-o"])
            .arg(&obj)
            .arg(&src)
            .status()
            .expect("run cc (gcc is needed for the tests)");
        assert!(status.success(), "cc failed");
        std::fs::read(&obj).expect("read object")
    })
}

pub const BUILD_A: &str = "1111111111111111111111111111111111111111";
pub const BUILD_B: &str = "2222222222222222222222222222222222222222";

pub fn package(
    key: &SecretKey,
    patch_id: &str,
    build_id: &str,
    level: u32,
    class: Classification,
    cves: &[&str],
) -> Vec<u8> {
    let manifest = Manifest {
        format_version: hotpatch_format::FORMAT_VERSION,
        patch_id: patch_id.into(),
        product: "demo".into(),
        target: Target { build_id: build_id.into(), file_name: "libdemo.so.1".into(), machine: Machine::X86_64 },
        level,
        classification: class,
        cves: cves.iter().map(|c| c.to_string()).collect(),
        description: "bounds check".into(),
        created: "2027-08-01T00:00:00Z".into(),
        functions: vec![FunctionPatch {
            symbol: "checked_len".into(),
            file: None,
            size: 32,
            original_sha256: "ab".repeat(32),
            replacement: "checked_len".into(),
            address: None,
        }],
        symbols: Vec::new(),
        payload_sha256: String::new(),
        signing_key_id: String::new(),
    };
    Package::build(manifest, payload(), key).expect("build package")
}

// Browser helpers: Debian's headless Chromium.

use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn chromium() -> String {
    std::env::var("HOTPATCH_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Loads `url` in a fresh headless Chromium profile and returns the DOM.
pub fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium (Debian package 'chromium' is needed for the web UI tests)");
    // The DOM is read while the browser runs: a page larger than the pipe's
    // buffer (64 KiB) would otherwise block it on its write and never exit.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    // A watchdog, not an assertion: a wedged browser must not outlive the test.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish loading {url}");
            }
        }
    }
    reader.join().expect("read DOM")
}

/// Signs a fresh browser in with a one-time link and opens `page`.
pub fn view(s: &TestServer, page: &str) -> String {
    let (st, link) = s.post("/api/v1/ui-links", &s.admin, json!({}));
    assert_eq!(st, 200, "{link}");
    dump_dom(&format!("{}{}?next={page}", s.base, link["path"].as_str().unwrap_or_default()))
}

impl TestServer {
    /// A browser signed in as the owner of `token` (through a one-time link).
    pub fn browser_as(&self, token: &str) -> browser::Browser {
        let (st, link) = self.post("/api/v1/ui-links", token, json!({}));
        assert_eq!(st, 200, "{link}");
        let mut b = browser::Browser::start();
        b.goto(&format!("{}{}", self.base, link["path"].as_str().unwrap_or_default()));
        b
    }

    /// A user of the admin's organisation with `role`; returns an API token of theirs.
    pub fn user_token(&self, name: &str, role: &str) -> String {
        let (st, u) = self.post("/api/v1/users", &self.admin, json!({ "name": name, "role": role }));
        assert_eq!(st, 200, "{u}");
        let (st, t) = self.post("/api/v1/tokens", &self.admin, json!({ "label": name, "user": name }));
        assert_eq!(st, 200, "{t}");
        t["token"].as_str().expect("token").to_string()
    }
}

/// Serves one page from another origin (another port of 127.0.0.1) for every request.
pub fn foreign_site(html: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = std::io::Write::write_all(&mut stream, reply.as_bytes());
        }
    });
    format!("http://{addr}/")
}
