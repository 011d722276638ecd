//! `hotpatch-loadgen`: simulates a fleet of agents checking in, on loopback, and
//! reports check-ins per second and latency percentiles. Bounded by a count and a
//! time limit, whichever comes first.
//!
//! With `--spawn SERVER_BINARY` it starts its own server (SQLite in a temporary
//! directory, or `--database postgres://...`), trusts a fresh signing key, uploads
//! a signed hotpatch and deploys it to the whole fleet, so that every check-in
//! computes a real offer. With `--server URL --token TOKEN` it loads a running server.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hotpatch_format::{Classification, FunctionPatch, Machine, Manifest, Package, SecretKey, Target};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "hotpatch-loadgen", about = "Bounded loopback load generator for hotpatch-server check-ins")]
struct Args {
    /// Start this hotpatch-server binary for the run (and stop it afterwards).
    #[arg(long, conflicts_with = "server")]
    spawn: Option<String>,
    /// Database for the spawned server (default: SQLite in a temporary directory).
    #[arg(long, requires = "spawn")]
    database: Option<String>,
    /// Base URL of a running server (loopback).
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// Admin API token of the running server.
    #[arg(long)]
    token: Option<String>,
    /// Simulated agents (machines enrolled).
    #[arg(long, default_value_t = 2000)]
    agents: usize,
    /// Check-ins to send in the measured phase.
    #[arg(long, default_value_t = 20000)]
    checkins: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Stop the measured phase after this many seconds even if not all check-ins were sent.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Scope the spawned server's deployment by a saved query with this text (e.g.
    /// 'hostname:sim-* and cores>=2 and target:libc.so.*') instead of the whole
    /// fleet, so every check-in evaluates the query.
    #[arg(long, requires = "spawn")]
    scope_query: Option<String>,
}

struct Spawned {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn payload(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let src = dir.join("fix.c");
    let obj = dir.join("fix.o");
    std::fs::write(&src, "int checked_len(int n) { return n < 0 ? 0 : n; }\n")?;
    let ok = Command::new("cc").args(["-c", "-O2", "-o"]).arg(&obj).arg(&src).status().context("running cc")?.success();
    if !ok {
        bail!("cc failed to build the demo payload");
    }
    Ok(std::fs::read(&obj)?)
}

const BUILD_ID: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

fn spawn(binary: &str, database: Option<&str>) -> anyhow::Result<(Spawned, String, String, Vec<u8>)> {
    let dir = tempfile::tempdir()?;
    let key = SecretKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(dir.path().join("trust"))?;
    key.public().save(&dir.path().join("trust").join("loadgen.pub")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let manifest = Manifest {
        format_version: hotpatch_format::FORMAT_VERSION,
        patch_id: "loadgen-fix-1".into(),
        product: "loadgen".into(),
        target: Target { build_id: BUILD_ID.into(), file_name: "libdemo.so.1".into(), machine: Machine::X86_64 },
        level: 1,
        classification: Classification::Security,
        cves: vec!["CVE-2027-9999".into()],
        description: "load test".into(),
        created: "2027-01-01T00:00:00Z".into(),
        functions: vec![FunctionPatch {
            symbol: "checked_len".into(),
            file: None,
            size: 32,
            original_sha256: "00".repeat(32),
            replacement: "checked_len".into(),
            address: None,
        }],
        symbols: Vec::new(),
        payload_sha256: String::new(),
        signing_key_id: String::new(),
    };
    let package = Package::build(manifest, &payload(dir.path())?, &key)?;
    let mut cmd = Command::new(binary);
    cmd.arg("--data").arg(dir.path()).args(["--listen", "127.0.0.1:0"]).env("RUST_LOG", "warn,hotpatch_server=info");
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    let mut child =
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().with_context(|| format!("starting {binary}"))?;
    let stderr = child.stderr.take().context("server stderr")?;
    let mut spawned = Spawned { child, _dir: dir };
    let mut token = None;
    let mut addr = None;
    let mut lines = BufReader::new(stderr).lines();
    // The server prints the bootstrap token, then logs its address; both within the first lines.
    for _ in 0..200 {
        let Some(line) = lines.next() else { break };
        let line = line?;
        let trimmed = line.trim();
        if trimmed.starts_with("hpu_") {
            token = Some(trimmed.to_string());
        }
        if let Some(pos) = line.find("addr=") {
            let rest = &line[pos + 5..];
            let clean: String = rest.chars().filter(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
            addr = Some(clean.trim_start_matches(':').to_string());
        }
        if token.is_some() && addr.is_some() {
            break;
        }
    }
    // Keep draining the server's log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let (Some(token), Some(addr)) = (token, addr) else {
        let _ = spawned.child.kill();
        bail!("the spawned server did not print its token and address (is the database empty?)");
    };
    Ok((spawned, format!("http://{addr}"), token, package))
}

fn call(agent: &ureq::Agent, method: &str, url: &str, token: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let req = agent.request(method, url).set("Authorization", &format!("Bearer {token}"));
    let res = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match res {
        Ok(r) => Ok(r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => bail!("{method} {url}: {code} {}", r.into_string().unwrap_or_default()),
        Err(e) => bail!("{method} {url}: {e}"),
    }
}

/// One simulated agent: its machine id and key.
struct SimMachine {
    id: String,
    key: hotpatch_wire::MachineKey,
}

fn checkin_body(i: usize) -> Value {
    json!({
        "facts": { "hostname": format!("sim-{i:06}"), "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1.0-18-amd64",
                   "arch": "x86_64", "cores": 2 + (i % 4) * 2, "readiness": { "ready": true, "root": true } },
        "targets": [
            { "build_id": BUILD_ID, "file_name": "libdemo.so.1", "processes": 3, "applied_level": 0 },
            { "build_id": format!("{:040x}", i % 97 + 1), "file_name": "libc.so.6", "processes": 40, "applied_level": 0 },
            { "build_id": format!("{:040x}", 1000 + i % 13), "file_name": "nginx", "processes": 4, "applied_level": 0 },
        ],
        "results": []
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.agents == 0 || args.concurrency == 0 || args.concurrency > 1024 || args.agents > 1_000_000 {
        bail!("--agents must be 1..1000000 and --concurrency 1..1024");
    }
    let (_spawned, base, token, package) = match (&args.spawn, &args.server, &args.token) {
        (Some(bin), _, _) => {
            let (s, b, t, p) = spawn(bin, args.database.as_deref())?;
            (Some(s), b, t, Some(p))
        }
        (None, Some(url), Some(t)) => (None, url.trim_end_matches('/').to_string(), t.clone(), None),
        _ => bail!("give --spawn SERVER_BINARY or --server URL --token TOKEN"),
    };
    if !(base.starts_with("http://127.") || base.starts_with("http://localhost") || base.starts_with("http://[::1]")) {
        bail!("the load generator only targets loopback servers, not {base}");
    }
    let http = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .max_idle_connections_per_host(args.concurrency + 4)
        .build();
    if let Some(pkg) = &package {
        let r = http
            .post(&format!("{base}/api/v1/hotpatches"))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(pkg);
        if let Err(e) = r {
            bail!("uploading the demo hotpatch: {e}");
        }
        let scope = match &args.scope_query {
            None => json!({}),
            Some(q) => {
                call(
                    &http,
                    "POST",
                    &format!("{base}/api/v1/queries"),
                    &token,
                    Some(&json!({ "name": "loadgen", "query": q })),
                )?;
                json!({ "query": "loadgen" })
            }
        };
        call(
            &http,
            "POST",
            &format!("{base}/api/v1/deployments"),
            &token,
            Some(&json!({
                "name": "loadgen", "kind": "hotpatch", "patch_id": "loadgen-fix-1", "scope": scope,
                "rings": { "canary_percent": 100, "soak_seconds": 0, "failure_threshold_percent": 100 }
            })),
        )?;
    }
    eprintln!("enrolling {} simulated agents at {base} ...", args.agents);
    let enroll_start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..args.concurrency.min(16) {
        let (http, base, token, next) = (http.clone(), base.clone(), token.clone(), next.clone());
        let n = args.agents;
        handles.push(std::thread::spawn(move || -> anyhow::Result<Vec<(usize, SimMachine)>> {
            let mut creds = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(creds);
                }
                let t = call(&http, "POST", &format!("{base}/api/v1/enrollment-tokens"), &token, Some(&json!({})))?;
                let key = hotpatch_wire::MachineKey::generate()?;
                let e = call(
                    &http,
                    "POST",
                    &format!("{base}/api/v1/agent/enroll"),
                    "",
                    Some(&json!({ "token": t["token"], "hostname": format!("sim-{i:06}"), "public_key": key.public().to_hex() })),
                )?;
                let id = e["machine_id"].as_str().context("machine_id")?.to_string();
                creds.push((i, SimMachine { id, key }));
            }
        }));
    }
    let mut creds: Vec<Option<SimMachine>> = (0..args.agents).map(|_| None).collect();
    for h in handles {
        for (i, c) in h.join().map_err(|_| anyhow::anyhow!("enroll thread panicked"))?? {
            creds[i] = Some(c);
        }
    }
    let creds: Vec<SimMachine> = creds.into_iter().collect::<Option<_>>().context("an agent was not enrolled")?;
    eprintln!("enrolled in {:.1} s", enroll_start.elapsed().as_secs_f64());
    let creds = Arc::new(creds);
    let bodies: Arc<Vec<String>> = Arc::new((0..args.agents).map(|i| checkin_body(i).to_string()).collect());
    let sent = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (http, base, creds, bodies, sent) =
            (http.clone(), base.clone(), creds.clone(), bodies.clone(), sent.clone());
        let (total, agents, conc) = (args.checkins, args.agents, args.concurrency);
        workers.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            let (mut ok200, mut ok304, mut errors) = (0usize, 0usize, 0usize);
            // Each worker owns the agents i ≡ w (mod concurrency) and remembers their ETags.
            let mine: Vec<usize> = (w..agents).step_by(conc).collect();
            let mut etags: Vec<Option<String>> = vec![None; mine.len()];
            // Each simulated agent signs with a rising sequence, as a real one does.
            let mut sequence =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64);
            let mut k = 0usize;
            while !mine.is_empty() && sent.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let slot = k % mine.len();
                let i = mine[slot];
                k += 1;
                sequence += 1;
                let sig =
                    creds[i].key.sign("POST", "/api/v1/agent/checkin", &creds[i].id, sequence, bodies[i].as_bytes());
                let mut req = sig
                    .headers()
                    .iter()
                    .fold(http.post(&format!("{base}/api/v1/agent/checkin")), |r, (name, value)| r.set(name, value))
                    .set("Content-Type", "application/json");
                if let Some(tag) = &etags[slot] {
                    req = req.set("If-None-Match", tag);
                }
                let t0 = Instant::now();
                let res = req.send_string(&bodies[i]);
                let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                lat.push(us);
                match res {
                    Ok(r) if r.status() == 304 => ok304 += 1,
                    Ok(r) => {
                        etags[slot] = r.header("ETag").map(str::to_string);
                        let _ = r.into_string();
                        ok200 += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, ok200, ok304, errors)
        }));
    }
    let mut lat = Vec::new();
    let (mut ok200, mut ok304, mut errors) = (0, 0, 0);
    for h in workers {
        let (l, a, b, c) = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        lat.extend(l);
        ok200 += a;
        ok304 += b;
        errors += c;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let report = json!({
        "server": base, "database": args.database.clone().unwrap_or_else(|| if args.spawn.is_some() { "sqlite".into() } else { "external".into() }),
        "agents": args.agents, "concurrency": args.concurrency,
        "checkins": lat.len(), "answers_200": ok200, "not_modified_304": ok304, "errors": errors,
        "seconds": (secs * 100.0).round() / 100.0,
        "checkins_per_second": ((lat.len() as f64 / secs) * 10.0).round() / 10.0,
        "latency_ms": { "p50": percentile(&lat, 0.50), "p90": percentile(&lat, 0.90), "p99": percentile(&lat, 0.99), "max": percentile(&lat, 1.0) },
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    if errors > 0 {
        bail!("{errors} check-ins failed");
    }
    Ok(())
}
