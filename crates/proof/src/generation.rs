//! One generation: a fresh server process under the checking clients, its
//! steady-state windows (unpatched and patched side by side), then the
//! apply/rollback cycles, then every request classified into the totals.

use crate::Args;
use crate::client::{ClientResult, PATCHED, SWITCHING, Sample, Shared, UNPATCHED, client, control};
use crate::hist::Histogram;
use crate::server::Server;
use serde::Serialize;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// "The second around a transition": from 500 ms before it starts to 500 ms after it ends.
pub const AROUND: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Apply,
    Rollback,
}

#[derive(Serialize, Clone)]
pub struct Transition {
    pub generation: u32,
    pub kind: Kind,
    pub ok: bool,
    /// From `--json`; 0 when the command failed.
    pub pause_us: u64,
    pub threads: u64,
    pub retries: u64,
    /// The engine's own wall time (`total_ms`).
    pub engine_ms: u64,
    /// The `hotpatch` command's wall time, process start to exit.
    pub command_ms: f64,
    pub sigstop: bool,
    pub error: Option<String>,
    #[serde(skip)]
    start: Duration,
    #[serde(skip)]
    end: Duration,
}

fn transition(args: &Args, kind: Kind, pid: i32, generation: u32, origin: Instant) -> Transition {
    let mut cmd = Command::new(&args.hotpatch);
    cmd.arg("--json");
    match kind {
        Kind::Apply => {
            cmd.arg("apply").arg("--pid").arg(pid.to_string()).arg(&args.package).arg("--trust").arg(&args.trust)
        }
        Kind::Rollback => cmd.arg("rollback").arg("--pid").arg(pid.to_string()),
    };
    let t0 = Instant::now();
    let out = cmd.stdin(Stdio::null()).output();
    let t1 = Instant::now();
    let mut t = Transition {
        generation,
        kind,
        ok: false,
        pause_us: 0,
        threads: 0,
        retries: 0,
        engine_ms: 0,
        command_ms: (t1 - t0).as_secs_f64() * 1e3,
        sigstop: false,
        error: None,
        start: t0 - origin,
        end: t1 - origin,
    };
    match out {
        Err(e) => t.error = Some(format!("cannot run {}: {e}", args.hotpatch.display())),
        Ok(out) if !out.status.success() => t.error = Some(format!("{}: {}", out.status, command_error(&out))),
        Ok(out) => match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Err(e) => t.error = Some(format!("--json output: {e}")),
            Ok(v) => {
                let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                t.ok = true;
                t.pause_us = n("pause_us");
                t.threads = n("threads");
                t.retries = n("retries");
                t.engine_ms = n("total_ms");
            }
        },
    }
    t
}

#[derive(Default)]
pub struct Totals {
    pub requests: u64,
    pub crafted: u64,
    pub failures: u64,
    pub wrong: u64,
    pub checked_after_switch: u64,
    pub control_requests: u64,
    pub control_failures: u64,
    pub failure_examples: Vec<String>,
    pub transitions: Vec<Transition>,
    pub floor_us: Vec<u64>,
    pub steady_unpatched: Histogram,
    pub steady_patched: Histogram,
    pub steady_unpatched_s: f64,
    pub steady_patched_s: f64,
    pub around: Histogram,
    pub around_crafted: Histogram,
    pub at_transition: Histogram,
    pub generation_ratios: Vec<f64>,
    pub generations: u32,
    pub server_deaths: u32,
    pub leaked_regions: u32,
    pub threads_seen: u64,
}

/// Why a `hotpatch --json` command failed: the `error` of its JSON answer,
/// else whatever it wrote to stderr.
fn command_error(out: &std::process::Output) -> String {
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

/// A steady-state measurement: normal requests only, one version throughout.
struct Window {
    patched: bool,
    from: Duration,
    to: Duration,
}

/// One server process and what happened to it.
struct Generation<'a> {
    args: &'a Args,
    g: u32,
    server: Server,
    shared: Arc<Shared>,
    windows: Vec<Window>,
    transitions: Vec<Transition>,
    applies: u32,
}

/// Runs generation `g`: `cycles` apply/rollback cycles on a fresh server.
pub fn generation(args: &Args, g: u32, cycles: u32, totals: &mut Totals) -> anyhow::Result<()> {
    let mut process = Generation::start(args, g)?;
    let clients = process.spawn_clients();
    std::thread::sleep(AROUND);
    process.steady_state(totals);
    process.cycle(cycles, totals);
    std::thread::sleep(AROUND);
    process.shared.stop.store(true, Ordering::SeqCst);
    let results: Vec<ClientResult> = clients.into_iter().map(|h| h.join().expect("client thread")).collect();
    process.check_regions(totals);
    process.tally(&results, totals);
    Ok(())
}

impl Generation<'_> {
    fn start(args: &Args, g: u32) -> anyhow::Result<Generation<'_>> {
        let server = Server::start(args.server_kind, &args.server, args.threads)?;
        let shared = Arc::new(Shared {
            state: AtomicU64::new(UNPATCHED),
            stop: AtomicBool::new(false),
            crafted: AtomicBool::new(true),
            origin: Instant::now(),
        });
        Ok(Generation { args, g, server, shared, windows: Vec::new(), transitions: Vec::new(), applies: 0 })
    }

    fn spawn_clients(&self) -> Vec<JoinHandle<ClientResult>> {
        (0..self.args.clients)
            .map(|id| {
                let shared = self.shared.clone();
                let (kind, addr) = (self.args.server_kind, self.server.addr);
                std::thread::spawn(move || client(kind, addr, id, shared))
            })
            .collect()
    }

    /// One transition: the clients are told a switch is running, the command
    /// runs (with the server stopped by SIGSTOP for its first 20 ms if
    /// `sigstop`), then the version it left is published and checked by a
    /// control request.
    fn run(&mut self, kind: Kind, sigstop: bool, totals: &mut Totals) {
        let pid = self.server.pid();
        self.shared.set(SWITCHING);
        let stopper = sigstop.then(|| {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            })
        });
        let mut t = transition(self.args, kind, pid, self.g, self.shared.origin);
        if let Some(h) = stopper {
            let _ = h.join();
        }
        t.sigstop = sigstop;
        let now = if t.ok {
            match kind {
                Kind::Apply => PATCHED,
                Kind::Rollback => UNPATCHED,
            }
        } else {
            self.version_after_failure()
        };
        self.shared.set(now);
        if kind == Kind::Apply && t.ok {
            self.applies += 1;
        }
        totals.control_requests += 1;
        if now != SWITCHING
            && let Err(e) = control(self.args.server_kind, self.server.addr, now)
        {
            totals.control_failures += 1;
            if totals.failure_examples.len() < 10 {
                totals.failure_examples.push(format!("generation {}: {e}", self.g));
            }
        }
        totals.threads_seen = totals.threads_seen.max(t.threads);
        self.transitions.push(t);
    }

    /// After a failed command, what the process runs is read from the process
    /// itself; unknown (no answer is checked) if that fails too.
    fn version_after_failure(&self) -> u64 {
        match hotpatch_engine::status(self.server.pid()) {
            Ok(applied) if applied.iter().any(|a| a.active) => PATCHED,
            Ok(_) => UNPATCHED,
            Err(_) => SWITCHING,
        }
    }

    /// Steady state, unpatched and patched, in alternating order.
    fn steady_state(&mut self, totals: &mut Totals) {
        let steady = Duration::from_millis(self.args.steady_ms);
        let origin = self.shared.origin;
        let patched_first = self.g % 2 == 1;
        if patched_first {
            self.run(Kind::Apply, false, totals);
            std::thread::sleep(AROUND);
        }
        for phase in 0..2 {
            let patched = (phase == 0) == patched_first;
            self.shared.crafted.store(false, Ordering::SeqCst);
            let from = origin.elapsed();
            std::thread::sleep(steady);
            self.windows.push(Window { patched, from, to: origin.elapsed() });
            self.shared.crafted.store(true, Ordering::SeqCst);
            std::thread::sleep(AROUND);
            if phase == 0 {
                self.run(if patched_first { Kind::Rollback } else { Kind::Apply }, false, totals);
                std::thread::sleep(AROUND);
            }
        }
        if !patched_first {
            self.run(Kind::Rollback, false, totals);
            std::thread::sleep(AROUND);
        }
    }

    fn cycle(&mut self, cycles: u32, totals: &mut Totals) {
        let dwell = Duration::from_millis(self.args.dwell_ms);
        let every = self.args.sigstop_every;
        for c in 0..cycles {
            if self.args.floor {
                if let Ok((pause, _)) = hotpatch_engine::stop_resume_floor(self.server.pid()) {
                    totals.floor_us.push(pause.as_micros() as u64);
                }
                std::thread::sleep(dwell / 4);
            }
            let sigstop = every > 0 && (self.g * self.args.per_process + c) % every == every - 1;
            self.run(Kind::Apply, sigstop, totals);
            std::thread::sleep(dwell);
            self.run(Kind::Rollback, false, totals);
            std::thread::sleep(dwell);
        }
    }

    /// Every region is retired and still mapped, none is active, none
    /// unaccounted for.
    fn check_regions(&mut self, totals: &mut Totals) {
        let g = self.g;
        if !self.server.alive() {
            totals.server_deaths += 1;
            totals.failure_examples.push(format!("generation {g}: the server died"));
            return;
        }
        match hotpatch_engine::status(self.server.pid()) {
            Ok(applied) => {
                let active = applied.iter().filter(|a| a.active).count();
                if active != 0 || applied.len() != self.applies as usize {
                    totals.leaked_regions += 1;
                    totals.failure_examples.push(format!(
                        "generation {g}: {} regions ({} active) after {} applies and as many rollbacks",
                        applied.len(),
                        active,
                        self.applies
                    ));
                }
            }
            Err(e) => totals.failure_examples.push(format!("generation {g}: status: {e}")),
        }
    }

    /// Every request into its histogram, and this process's throughput
    /// ratio, patched over unpatched.
    fn tally(self, results: &[ClientResult], totals: &mut Totals) {
        drop(self.server);
        let (mut gen_unpatched, mut gen_patched) = (Histogram::default(), Histogram::default());
        for r in results {
            totals.add_counts(r, self.g);
            for s in &r.samples {
                let t = Duration::from_micros(s.sent_us);
                if let Some(w) = self.windows.iter().find(|w| t >= w.from && t < w.to) {
                    if !s.crafted {
                        if w.patched { &mut gen_patched } else { &mut gen_unpatched }.record(s.latency_ns);
                    }
                } else if near(&self.transitions, s) {
                    if s.crafted { &mut totals.around_crafted } else { &mut totals.around }.record(s.latency_ns);
                    if overlaps(&self.transitions, s) {
                        totals.at_transition.record(s.latency_ns);
                    }
                }
            }
        }
        let (mut rate_unpatched, mut rate_patched) = (0.0, 0.0);
        for w in &self.windows {
            let secs = (w.to - w.from).as_secs_f64();
            if w.patched {
                totals.steady_patched_s += secs;
                rate_patched = gen_patched.count() as f64 / secs;
            } else {
                totals.steady_unpatched_s += secs;
                rate_unpatched = gen_unpatched.count() as f64 / secs;
            }
        }
        if rate_unpatched > 0.0 {
            totals.generation_ratios.push(rate_patched / rate_unpatched);
        }
        totals.steady_unpatched.merge(&gen_unpatched);
        totals.steady_patched.merge(&gen_patched);
        totals.transitions.extend(self.transitions);
        totals.generations += 1;
    }
}

/// Sent within `AROUND` of a transition.
fn near(transitions: &[Transition], s: &Sample) -> bool {
    let t = Duration::from_micros(s.sent_us);
    transitions.iter().any(|tr| t + AROUND >= tr.start && t <= tr.end + AROUND)
}

/// In flight while a `hotpatch` command ran.
fn overlaps(transitions: &[Transition], s: &Sample) -> bool {
    let t = Duration::from_micros(s.sent_us);
    let lat = Duration::from_nanos(s.latency_ns);
    transitions.iter().any(|tr| t <= tr.end && t + lat >= tr.start)
}

impl Totals {
    fn add_counts(&mut self, r: &ClientResult, g: u32) {
        self.requests += r.requests;
        self.crafted += r.crafted;
        self.failures += r.failures;
        self.wrong += r.wrong;
        self.checked_after_switch += r.checked_after_switch;
        for f in &r.first_failures {
            if self.failure_examples.len() < 10 {
                self.failure_examples.push(format!("generation {g}: {f}"));
            }
        }
    }
}
