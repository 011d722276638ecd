//! PostgreSQL restarting under traffic. The test runs its own PostgreSQL cluster
//! (never the one scripts/test shares between tests) as the unprivileged user
//! `hotpatchpg` on a free loopback port, and the real `hotpatch-server` binary
//! over it. Agents check in and an admin reads and writes through the API while
//! the database restarts (`pg_ctl restart -m fast`) and later stays down until
//! the server has answered that it is unavailable. Asserted:
//!
//! - while the database is away every answer is 200 or a 503 with the JSON error
//!   "database unavailable, try again", within a bound; never another status, a
//!   dropped connection or a crash of the server;
//! - the same server process answers 200 again once the database is back;
//! - a check-in writes its machine row and all its targets or nothing, also when
//!   it failed: a check-in cut mid-transaction leaves nothing, and every read shows
//!   one complete generation of targets, one that a check-in sent and that no
//!   later successful check-in replaced.
//!
//! Needs root (to run PostgreSQL as `hotpatchpg`) and PostgreSQL's binaries; it
//! skips without them, except under scripts/test (HOTPATCH_TEST_POSTGRES_URL set),
//! which installs both, where it fails instead.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::server_process::ServerProcess;
use common::{call, checkin_body};
use serde_json::{Value, json};
use sqlx::{Connection, Row};

const PG_USER: &str = "hotpatchpg";
/// Machines, each checked in by its own traffic thread.
const MACHINES: usize = 3;
/// Targets per check-in: each check-in rewrites this many machine_targets rows.
const TARGETS: usize = 12;
/// Longest a request may take, outage or not (the server waits up to 10 s for a
/// connection, a request may wait twice). Generous for a busy shared machine.
const REQUEST_BOUND: Duration = Duration::from_secs(60);
/// Watchdog for each phase of the test: progress, not speed, is what is asserted.
const PHASE_BOUND: Duration = Duration::from_secs(300);

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The directory of `initdb` and `pg_ctl`: from PATH, else the newest /usr/lib/postgresql/*/bin.
fn pg_bin() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file());
    from_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    })
}

/// Root is needed to run PostgreSQL as another user (PostgreSQL refuses to run as root).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn pg_user_uid() -> u32 {
    let id = || Command::new("id").args(["-u", PG_USER]).output().expect("run id");
    let mut out = id();
    if !out.status.success() {
        // As scripts/test does.
        run(Command::new("useradd").args(["--system", "--no-create-home", PG_USER]));
        out = id();
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("uid of hotpatchpg")
}

/// A free loopback port below the ephemeral range, so that no outgoing connection
/// takes it while the database is down.
fn free_port(attempt: u16) -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut seed = [0u8; 2];
    getrandom::getrandom(&mut seed).expect("randomness");
    let span = low.saturating_sub(20000).max(1);
    let start = 20000 + (u16::from_le_bytes(seed).wrapping_add(attempt.wrapping_mul(7919))) % span;
    (0..span)
        .map(|i| 20000 + (start - 20000 + i) % span)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free loopback port")
}

/// The test's own PostgreSQL cluster, stopped on drop (also when the test panics).
struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    options: String,
    log: PathBuf,
    // Last: removed after the cluster has stopped.
    dir: tempfile::TempDir,
}

impl PgCluster {
    fn init(bin: PathBuf) -> PgCluster {
        let uid = pg_user_uid();
        // Under /tmp, which hotpatchpg may traverse (TMPDIR might not be).
        let dir = tempfile::Builder::new().prefix("hotpatch-pgrestart.").tempdir_in("/tmp").expect("tempdir");
        std::os::unix::fs::chown(dir.path(), Some(uid), None).expect("chown the cluster directory");
        let data = dir.path().join("data");
        let mut cluster = PgCluster { bin, data, port: 0, options: String::new(), log: dir.path().join("log"), dir };
        run(cluster.as_pg_user("initdb").arg("-D").arg(&cluster.data).args(["-U", "hotpatch", "--auth=trust"]));
        for attempt in 0..5 {
            cluster.port = free_port(attempt);
            cluster.options =
                format!("-p {} -k {} -c listen_addresses=127.0.0.1", cluster.port, cluster.dir.path().display());
            if cluster.pg_ctl(&["start"]).status.success() {
                return cluster;
            }
        }
        panic!("PostgreSQL did not start:\n{}", cluster.log_text());
    }

    fn as_pg_user(&self, program: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", PG_USER, "--"]).arg(self.bin.join(program));
        cmd
    }

    /// `pg_ctl ACTION` waiting for it to finish (the waits are pg_ctl's own, 120 s at most).
    fn pg_ctl(&self, action: &[&str]) -> Output {
        self.as_pg_user("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "-o", &self.options])
            .args(action)
            .output()
            .expect("run pg_ctl")
    }

    fn must(&self, action: &[&str]) {
        let out = self.pg_ctl(action);
        assert!(
            out.status.success(),
            "pg_ctl {action:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
    }

    fn url(&self) -> String {
        format!("postgres://hotpatch@127.0.0.1:{}/postgres", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing to keep; pg_ctl waits until the postmaster and its children are gone.
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
    }
}

#[derive(Default)]
struct Stats {
    /// Traffic rounds in which every request got a 200.
    clean_rounds: AtomicU64,
    /// Answers 503 "database unavailable".
    unavailable: AtomicU64,
    ok: AtomicU64,
    /// Check-ins that failed but whose generation a later read showed as written.
    failed_but_committed: AtomicU64,
    /// Check-ins that failed and whose generation was not written.
    failed_and_absent: AtomicU64,
    slowest_ms: AtomicU64,
    /// The distinct error messages of the 503 answers.
    unavailable_messages: Mutex<BTreeSet<String>>,
    problems: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Stats {
    fn problem(&self, p: String) {
        eprintln!("PROBLEM: {p}");
        self.problems.lock().expect("problems lock").push(p);
    }
}

struct StopTraffic(Arc<Stats>);

impl Drop for StopTraffic {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// One request; its JSON when it got a 200. Anything but a 200 or a clear 503 is a problem.
fn request(
    stats: &Stats,
    agent: &ureq::Agent,
    what: &str,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Option<Value> {
    let started = Instant::now();
    let mut req = agent.request(method, url);
    let bytes = body.map(|b| serde_json::to_vec(b).expect("json"));
    req = if token.starts_with("machine:") {
        common::sign_request(req, token, url, bytes.as_deref().unwrap_or_default())
    } else {
        req.set("Authorization", &format!("Bearer {token}"))
    };
    req = req.set("Accept", "application/json");
    let result = match bytes {
        Some(b) => req.set("Content-Type", "application/json").send_bytes(&b),
        None => req.call(),
    };
    let took = started.elapsed();
    stats.slowest_ms.fetch_max(took.as_millis() as u64, Ordering::Relaxed);
    if took > REQUEST_BOUND {
        stats.problem(format!("{what}: took {took:?}, more than {REQUEST_BOUND:?}"));
    }
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => {
            stats.problem(format!("{what}: no HTTP answer ({t})"));
            return None;
        }
    };
    let status = response.status();
    let text = response.into_string().unwrap_or_default();
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    match status {
        200 => {
            stats.ok.fetch_add(1, Ordering::Relaxed);
            Some(json)
        }
        503 if json["error"] == "database unavailable, try again" => {
            stats.unavailable.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut m) = stats.unavailable_messages.lock() {
                m.insert(json["error"].as_str().unwrap_or_default().to_string());
            }
            None
        }
        _ => {
            stats.problem(format!("{what}: HTTP {status} {text}"));
            None
        }
    }
}

fn build_id(machine: usize, target: usize) -> String {
    format!("{:040x}", (machine as u128 + 1) << 64 | target as u128)
}

fn checkin_for(machine: usize, generation: u32) -> Value {
    let ids: Vec<String> = (0..TARGETS).map(|t| build_id(machine, t)).collect();
    let names: Vec<String> = (0..TARGETS).map(|t| format!("lib{t:02}.so")).collect();
    let targets: Vec<(&str, &str, u32)> =
        ids.iter().zip(&names).map(|(b, n)| (b.as_str(), n.as_str(), generation)).collect();
    checkin_body(&format!("m{machine}-g{generation}"), 4, &targets, json!([]))
}

/// The generation a machine's stored state shows, or a description of what is inconsistent.
fn generation_of(machine: usize, hostname: &str, levels: &[i64]) -> Result<u32, String> {
    let g: u32 = hostname
        .strip_prefix(&format!("m{machine}-g"))
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("hostname {hostname:?} is not from a check-in"))?;
    if levels.len() != TARGETS || levels.iter().any(|l| *l != i64::from(g)) {
        return Err(format!("partial write: machine row at generation {g}, targets at levels {levels:?}"));
    }
    Ok(g)
}

struct Traffic {
    machine: usize,
    id: String,
    /// Generations the stored state may be at: the last one seen or written
    /// successfully, and every check-in that failed since.
    possible: BTreeSet<u32>,
}

fn traffic(base: String, admin: String, credential: String, mut t: Traffic, stats: Arc<Stats>) -> Traffic {
    let agent = ureq::AgentBuilder::new().timeout(REQUEST_BOUND * 2).build();
    let mut generation = *t.possible.last().expect("a first generation");
    for round in 0..20_000u32 {
        if stats.stop.load(Ordering::Relaxed) {
            break;
        }
        let m = t.machine;
        let mut clean = true;
        generation += 1;
        let body = checkin_for(m, generation);
        let what = format!("machine {m} check-in {generation}");
        match request(&stats, &agent, &what, "POST", &format!("{base}/api/v1/agent/checkin"), &credential, Some(&body))
        {
            Some(_) => t.possible = BTreeSet::from([generation]),
            None => {
                t.possible.insert(generation);
                clean = false;
            }
        }
        let what = format!("machine {m} read after check-in {generation}");
        match request(&stats, &agent, &what, "GET", &format!("{base}/api/v1/machines/{}", t.id), &admin, None) {
            Some(v) => {
                let levels: Vec<i64> =
                    v["targets"].as_array().into_iter().flatten().filter_map(|x| x["applied_level"].as_i64()).collect();
                match generation_of(m, v["hostname"].as_str().unwrap_or_default(), &levels) {
                    Ok(g) if t.possible.contains(&g) => {
                        if g != generation && t.possible.contains(&generation) && t.possible.len() > 1 {
                            stats.failed_and_absent.fetch_add(1, Ordering::Relaxed);
                        } else if g == generation && t.possible.len() > 1 {
                            stats.failed_but_committed.fetch_add(1, Ordering::Relaxed);
                        }
                        t.possible = BTreeSet::from([g]);
                    }
                    Ok(g) => stats.problem(format!("{what}: generation {g}, expected one of {:?}", t.possible)),
                    Err(e) => stats.problem(format!("{what}: {e}")),
                }
            }
            None => clean = false,
        }
        // An admin write (machine row and audit entry in one transaction) and the health check.
        let tags = json!({ "tags": [format!("round-{round}")] });
        let what = format!("machine {m} tags in round {round}");
        let url = format!("{base}/api/v1/machines/{}/tags", t.id);
        clean &= request(&stats, &agent, &what, "PUT", &url, &admin, Some(&tags)).is_some();
        clean &= request(&stats, &agent, "health check", "GET", &format!("{base}/healthz"), "", None).is_some();
        if clean {
            stats.clean_rounds.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    t
}

/// Waits for `done`, failing with everything known when the bound passes, the
/// server dies or a traffic thread ended early.
fn wait_for(
    phase: &str,
    server: &mut ServerProcess,
    cluster: &PgCluster,
    threads: &[JoinHandle<Traffic>],
    stats: &Stats,
    done: impl Fn() -> bool,
) {
    let deadline = Instant::now() + PHASE_BOUND;
    while !done() {
        let problem = if !server.alive() {
            "the server process died"
        } else if threads.iter().any(|t| t.is_finished()) {
            "a traffic thread ended early"
        } else if Instant::now() > deadline {
            "no progress"
        } else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        stats.stop.store(true, Ordering::Relaxed);
        panic!(
            "{phase}: {problem} (ok {}, unavailable {}, problems {:?})\nserver log:\n{}\nPostgreSQL log:\n{}",
            stats.ok.load(Ordering::Relaxed),
            stats.unavailable.load(Ordering::Relaxed),
            stats.problems.lock().map(|p| p.clone()).unwrap_or_default(),
            server.log_text(),
            cluster.log_text()
        );
    }
    eprintln!(
        "{phase}: done (ok {}, unavailable {}, clean rounds {})",
        stats.ok.load(Ordering::Relaxed),
        stats.unavailable.load(Ordering::Relaxed),
        stats.clean_rounds.load(Ordering::Relaxed)
    );
}

/// Enrolls machine `m` and checks it in at generation 1; returns (machine id, credential).
fn enroll(base: &str, admin: &str, m: usize) -> (String, String) {
    let (s, v, _) = call("POST", &format!("{base}/api/v1/enrollment-tokens"), Some(admin), Some(&json!({})));
    assert_eq!(s, 200, "{v}");
    let key = hotpatch_wire::MachineKey::generate().expect("machine key");
    let enroll = json!({ "token": v["token"], "hostname": format!("m{m}"), "public_key": key.public().to_hex() });
    let (s, v, _) = call("POST", &format!("{base}/api/v1/agent/enroll"), None, Some(&enroll));
    assert_eq!(s, 200, "{v}");
    let id = v["machine_id"].as_str().expect("id").to_string();
    let credential = common::machine_credential(&id, &key);
    let (s, v, _) = call("POST", &format!("{base}/api/v1/agent/checkin"), Some(&credential), Some(&checkin_for(m, 1)));
    assert_eq!(s, 200, "{v}");
    (id, credential)
}

/// The generation machine `m` shows through the API.
fn read_generation(base: &str, admin: &str, m: usize, id: &str) -> u32 {
    let (s, v, _) = call("GET", &format!("{base}/api/v1/machines/{id}"), Some(admin), None);
    assert_eq!(s, 200, "{v}");
    let levels: Vec<i64> =
        v["targets"].as_array().into_iter().flatten().filter_map(|x| x["applied_level"].as_i64()).collect();
    generation_of(m, v["hostname"].as_str().unwrap_or_default(), &levels).unwrap_or_else(|e| panic!("machine {m}: {e}"))
}

#[test]
fn server_rides_out_a_postgres_restart_under_traffic() {
    let required = std::env::var("HOTPATCH_TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty());
    let bin = pg_bin();
    let missing = match (is_root(), &bin) {
        (false, _) => Some("not root (PostgreSQL must run as the user hotpatchpg)"),
        (true, None) => Some("PostgreSQL's initdb/pg_ctl not found (scripts/setup installs them)"),
        (true, Some(_)) => None,
    };
    if let Some(why) = missing {
        assert!(!required, "db_restart cannot run under scripts/test: {why}");
        eprintln!("db_restart skipped: {why}");
        return;
    }
    let started = Instant::now();
    let cluster = PgCluster::init(bin.expect("checked above"));
    let data = tempfile::tempdir().expect("tempdir");
    let url = cluster.url();
    let mut server = ServerProcess::start([
        OsStr::new("--data"),
        data.path().as_os_str(),
        OsStr::new("--database"),
        OsStr::new(&url),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--db-connections"),
        OsStr::new("8"),
    ]);
    let pid = server.pid();
    let base = format!("http://{}", server.addr);
    eprintln!("PostgreSQL on {url}, server {base} (pid {pid}), set up in {:?}", started.elapsed());
    let stats = Arc::new(Stats::default());
    let _stop_traffic_on_panic = StopTraffic(stats.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    // 0. A check-in cut off in the middle of its transaction leaves nothing behind.
    // The test holds a lock on usage_days, which a check-in writes after the machine
    // row and all its targets; the restart then aborts the waiting transaction.
    let cut = MACHINES;
    let (cut_id, cut_credential) = enroll(&base, &server.admin, cut);
    let (lock, mut monitor) = rt.block_on(async {
        let mut lock = sqlx::PgConnection::connect(&url).await.expect("connect to the test cluster");
        sqlx::query("BEGIN").execute(&mut lock).await.expect("begin");
        sqlx::query("LOCK TABLE usage_days IN SHARE ROW EXCLUSIVE MODE").execute(&mut lock).await.expect("lock");
        // Outside that transaction: pg_stat_activity holds still within one.
        (lock, sqlx::PgConnection::connect(&url).await.expect("connect to the test cluster"))
    });
    let checkin = {
        let (stats, base, body) = (stats.clone(), base.clone(), checkin_for(cut, 2));
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new().timeout(REQUEST_BOUND * 2).build();
            let url = format!("{base}/api/v1/agent/checkin");
            request(&stats, &agent, "check-in cut by the restart", "POST", &url, &cut_credential, Some(&body))
        })
    };
    let deadline = Instant::now() + PHASE_BOUND;
    loop {
        let waiting: i64 = rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO usage_days%'",
                )
                .fetch_one(&mut monitor),
            )
            .expect("pg_stat_activity");
        if waiting > 0 {
            break;
        }
        assert!(!checkin.is_finished(), "the check-in did not wait for the usage_days lock");
        assert!(Instant::now() < deadline, "the check-in never reached usage_days");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.must(&["restart", "-m", "fast"]);
    drop((lock, monitor));
    let answer = checkin.join().expect("check-in thread");
    let problems = stats.problems.lock().expect("problems").clone();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(answer.is_none() && stats.unavailable.load(Ordering::Relaxed) == 1, "the cut check-in did not get a 503");
    assert_eq!(read_generation(&base, &server.admin, cut, &cut_id), 1, "the aborted check-in left rows behind");
    eprintln!("a check-in cut by the restart: 503, nothing written");

    // Traffic: each machine checks in, is read and tagged, over and over.
    let mut threads = Vec::new();
    for m in 0..MACHINES {
        let (id, credential) = enroll(&base, &server.admin, m);
        let t = Traffic { machine: m, id, possible: BTreeSet::from([1]) };
        let (base, admin, stats) = (base.clone(), server.admin.clone(), stats.clone());
        threads.push(std::thread::spawn(move || traffic(base, admin, credential, t, stats)));
    }
    let clean = || stats.clean_rounds.load(Ordering::Relaxed);
    let unavailable = || stats.unavailable.load(Ordering::Relaxed);
    let rounds = MACHINES as u64 * 2;
    wait_for("traffic before the restart", &mut server, &cluster, &threads, &stats, || clean() >= rounds);

    // 1. A quick restart: connections in use are cut, transactions in flight abort.
    cluster.must(&["restart", "-m", "fast"]);
    let after = clean();
    wait_for("recovery from the restart", &mut server, &cluster, &threads, &stats, || clean() >= after + rounds);

    // 2. The database stays away until every traffic thread could see the outage.
    cluster.must(&["stop", "-m", "fast"]);
    let before = unavailable();
    let want = MACHINES as u64;
    wait_for("503s while the database is down", &mut server, &cluster, &threads, &stats, || {
        unavailable() >= before + want
    });
    cluster.must(&["start"]);
    let after = clean();
    wait_for("recovery once the database is back", &mut server, &cluster, &threads, &stats, || {
        clean() >= after + rounds
    });

    stats.stop.store(true, Ordering::Relaxed);
    let finished: Vec<Traffic> = threads.into_iter().map(|t| t.join().expect("traffic thread")).collect();
    assert!(server.alive() && server.pid() == pid, "the same server process still serves");
    let problems = stats.problems.lock().expect("problems").clone();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\nserver log:\n{}",
        problems.len(),
        problems.join("\n"),
        server.log_text()
    );
    assert!(!server.log_text().contains("panicked"), "the server panicked:\n{}", server.log_text());

    // The stored state read directly from PostgreSQL: one complete generation per
    // machine, one the traffic could have left.
    rt.block_on(async {
        let mut db = sqlx::PgConnection::connect(&url).await.expect("connect to the test cluster");
        for t in &finished {
            let host: String = sqlx::query("SELECT hostname FROM machines WHERE id = $1")
                .bind(&t.id)
                .fetch_one(&mut db)
                .await
                .expect("machine row")
                .get(0);
            let levels: Vec<i64> = sqlx::query("SELECT applied_level FROM machine_targets WHERE machine_id = $1")
                .bind(&t.id)
                .fetch_all(&mut db)
                .await
                .expect("machine_targets rows")
                .iter()
                .map(|r| r.get(0))
                .collect();
            let g = generation_of(t.machine, &host, &levels).unwrap_or_else(|e| panic!("machine {}: {e}", t.machine));
            assert!(t.possible.contains(&g), "machine {}: generation {g}, expected one of {:?}", t.machine, t.possible);
        }
        let _ = db.close().await;
    });
    eprintln!(
        "db_restart: {} answers 200, {} answers 503 {:?}; failed check-ins found committed {}, absent {}; \
         slowest request {} ms; whole test {:?}",
        stats.ok.load(Ordering::Relaxed),
        unavailable(),
        stats.unavailable_messages.lock().map(|m| m.clone()).unwrap_or_default(),
        stats.failed_but_committed.load(Ordering::Relaxed),
        stats.failed_and_absent.load(Ordering::Relaxed),
        stats.slowest_ms.load(Ordering::Relaxed),
        started.elapsed()
    );
    drop(server);
    drop(cluster);
}
