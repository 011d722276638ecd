//! One generation: a fresh server process under the checking clients, its
//! steady-state windows (unpatched and patched side by side), then the
//! apply/rollback cycles, then every request classified into the totals.

use crate::Args;
use crate::client::{ClientResult, PATCHED, SWITCHING, Sample, Shared, UNPATCHED, client, control};
use crate::faults::{Fault, FaultCounts, Helper, MemoryPressure};
use crate::hist::Histogram;
use crate::series::{self, Bin, Mark};
use crate::server::Server;
use crate::transition::{Kind, Transition, in_every_process};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// "The second around a transition": from 500 ms before it starts to 500 ms after it ends.
pub const AROUND: Duration = Duration::from_millis(500);

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
    /// Processes per server (nginx: master and workers).
    pub processes: usize,
    /// The run's clock, started with the first generation.
    pub run_origin: Option<Instant>,
    pub series: Vec<Bin>,
    pub marks: Vec<Mark>,
    pub faults: FaultCounts,
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
    marks: Vec<Mark>,
    /// Successful applies per process (each is rolled back again).
    applies: HashMap<i32, u32>,
    /// `--fault memory`: the server's cgroup, dropped after the server.
    pressure: Option<MemoryPressure>,
}

/// Stops the process now and continues it 20 ms later (its own SIGSTOP,
/// while the engine works on it).
fn sigstop_for_20_ms(pid: i32) -> JoinHandle<()> {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    })
}

/// Runs generation `g`: `cycles` apply/rollback cycles on a fresh server.
pub fn generation(
    args: &Args,
    g: u32,
    cycles: u32,
    helper: Option<&Helper>,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let mut process = Generation::start(args, g, helper)?;
    let clients = process.spawn_clients();
    std::thread::sleep(AROUND);
    process.steady_state(totals);
    process.cycle(cycles, totals);
    std::thread::sleep(AROUND);
    process.shared.stop.store(true, Ordering::SeqCst);
    let results: Vec<ClientResult> = clients.into_iter().map(|h| h.join().expect("client thread")).collect();
    process.check_regions(totals);
    if let Some(p) = &process.pressure {
        let c = p.counts();
        totals.faults.memory_limit_hits += c.memory_limit_hits;
        totals.faults.hog_restarts += c.hog_restarts;
    }
    process.tally(&results, totals);
    if let Some(h) = helper {
        totals.faults.helper_rounds += h.take_rounds();
    }
    Ok(())
}

impl Generation<'_> {
    fn start<'a>(args: &'a Args, g: u32, helper: Option<&Helper>) -> anyhow::Result<Generation<'a>> {
        let env = helper.map(|h| h.env(args.fault)).unwrap_or_default();
        let server = Server::start(args.server_kind, &args.server, args.threads, &env)?;
        let pressure = (args.fault == Fault::Memory).then(|| MemoryPressure::start(&server.pids())).transpose()?;
        let shared = Arc::new(Shared {
            state: AtomicU64::new(UNPATCHED),
            stop: AtomicBool::new(false),
            crafted: AtomicBool::new(true),
            origin: Instant::now(),
        });
        Ok(Generation {
            args,
            g,
            server,
            shared,
            windows: Vec::new(),
            transitions: Vec::new(),
            marks: Vec::new(),
            applies: HashMap::new(),
            pressure,
        })
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

    /// One switch: the clients are told it is running, the command runs in
    /// every process of the server (with the server stopped by SIGSTOP for
    /// the first 20 ms if `sigstop`), then the version it left is published
    /// and checked by a control request.
    fn run(&mut self, kind: Kind, sigstop: bool, totals: &mut Totals) {
        let pids = self.server.pids();
        self.shared.set(SWITCHING);
        let stopper = sigstop.then(|| sigstop_for_20_ms(self.server.pid()));
        let done = in_every_process(self.args, kind, &pids, self.g, self.shared.origin);
        if let Some(h) = stopper {
            let _ = h.join();
        }
        let all_ok = done.iter().all(|t| t.ok);
        let now = match (all_ok, kind) {
            (true, Kind::Apply) => PATCHED,
            (true, Kind::Rollback) => UNPATCHED,
            (false, _) => self.version_after_failure(&pids),
        };
        self.shared.set(now);
        self.control(now, totals);
        self.mark(kind, sigstop, &done);
        for mut t in done {
            if kind == Kind::Apply && t.ok {
                *self.applies.entry(t.pid).or_default() += 1;
            }
            t.sigstop = sigstop;
            totals.threads_seen = totals.threads_seen.max(t.threads);
            self.transitions.push(t);
        }
    }

    fn control(&self, now: u64, totals: &mut Totals) {
        totals.control_requests += 1;
        if now != SWITCHING
            && let Err(e) = control(self.args.server_kind, self.server.addr, now)
        {
            totals.control_failures += 1;
            if totals.failure_examples.len() < 10 {
                totals.failure_examples.push(format!("generation {}: {e}", self.g));
            }
        }
    }

    /// The switch on the time series: first command's start to last one's end.
    fn mark(&mut self, kind: Kind, sigstop: bool, done: &[Transition]) {
        let start = done.iter().map(|t| t.start).min().unwrap_or_default();
        let end = done.iter().map(|t| t.end).max().unwrap_or_default();
        self.marks.push(Mark {
            start_s: start.as_secs_f64(),
            end_s: end.as_secs_f64(),
            kind: match kind {
                Kind::Apply => "apply",
                Kind::Rollback => "rollback",
            },
            generation: self.g,
            processes: done.len(),
            ok: done.iter().all(|t| t.ok),
            pause_max_us: done.iter().map(|t| t.pause_us).max().unwrap_or(0),
            fault: if sigstop { Some("sigstop") } else { self.args.fault.name() },
        });
    }

    /// After a failed command, what the server runs is read from its
    /// processes themselves: unknown (no answer is checked) when they
    /// disagree or cannot be read.
    fn version_after_failure(&self, pids: &[i32]) -> u64 {
        let active: Vec<Option<bool>> = pids
            .iter()
            .map(|&pid| hotpatch_engine::status(pid).ok().map(|applied| applied.iter().any(|a| a.active)))
            .collect();
        if active.iter().all(|a| *a == Some(true)) {
            PATCHED
        } else if active.iter().all(|a| *a == Some(false)) {
            UNPATCHED
        } else {
            SWITCHING
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
                for pid in self.server.pids() {
                    if let Ok((pause, _)) = hotpatch_engine::stop_resume_floor(pid) {
                        totals.floor_us.push(pause.as_micros() as u64);
                    }
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

    /// In every process: every region is retired and still mapped, none is
    /// active, none unaccounted for.
    fn check_regions(&mut self, totals: &mut Totals) {
        let g = self.g;
        if !self.server.alive() {
            totals.server_deaths += 1;
            totals.failure_examples.push(format!("generation {g}: the server died"));
            return;
        }
        for pid in self.server.pids() {
            let applies = self.applies.get(&pid).copied().unwrap_or(0);
            match hotpatch_engine::status(pid) {
                Ok(applied) => {
                    let active = applied.iter().filter(|a| a.active).count();
                    if active != 0 || applied.len() != applies as usize {
                        totals.leaked_regions += 1;
                        totals.failure_examples.push(format!(
                            "generation {g}, process {pid}: {} regions ({active} active) after {applies} applies and as many rollbacks",
                            applied.len(),
                        ));
                    }
                }
                Err(e) => {
                    totals.leaked_regions += 1;
                    totals.failure_examples.push(format!("generation {g}, process {pid}: status: {e}"));
                }
            }
        }
    }

    /// Every request into its histogram, and this process's throughput
    /// ratio, patched over unpatched.
    fn tally(self, results: &[ClientResult], totals: &mut Totals) {
        totals.processes = totals.processes.max(self.server.pids().len());
        drop(self.server);
        drop(self.pressure);
        let switches: Vec<(Duration, Duration)> =
            self.marks.iter().map(|m| (Duration::from_secs_f64(m.start_s), Duration::from_secs_f64(m.end_s))).collect();
        let (mut gen_unpatched, mut gen_patched) = (Histogram::default(), Histogram::default());
        for r in results {
            totals.add_counts(r, self.g);
            for s in &r.samples {
                let t = Duration::from_micros(s.sent_us);
                if let Some(w) = self.windows.iter().find(|w| t >= w.from && t < w.to) {
                    if !s.crafted {
                        if w.patched { &mut gen_patched } else { &mut gen_unpatched }.record(s.latency_ns);
                    }
                } else if near(&switches, s) {
                    if s.crafted { &mut totals.around_crafted } else { &mut totals.around }.record(s.latency_ns);
                    if overlaps(&switches, s) {
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
        let offset = self.shared.origin - *totals.run_origin.get_or_insert(self.shared.origin);
        totals.series.extend(series::bins(results.iter().flat_map(|r| &r.samples), offset));
        totals.marks.extend(self.marks.into_iter().map(|mut m| {
            m.start_s += offset.as_secs_f64();
            m.end_s += offset.as_secs_f64();
            m
        }));
        totals.transitions.extend(self.transitions);
        totals.generations += 1;
    }
}

/// Sent within `AROUND` of a switch (its commands' first start, last end).
fn near(switches: &[(Duration, Duration)], s: &Sample) -> bool {
    let t = Duration::from_micros(s.sent_us);
    switches.iter().any(|&(start, end)| t + AROUND >= start && t <= end + AROUND)
}

/// In flight while a switch's `hotpatch` commands ran.
fn overlaps(switches: &[(Duration, Duration)], s: &Sample) -> bool {
    let t = Duration::from_micros(s.sent_us);
    let lat = Duration::from_nanos(s.latency_ns);
    switches.iter().any(|&(start, end)| t <= end && t + lat >= start)
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
