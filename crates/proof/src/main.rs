//! `hotpatch-proof`: a real server patched and rolled back under load (issue 13).
//!
//! Starts the server (`--server-kind`: redis, memcached or nginx) on loopback, keeps
//! it busy with clients that check every answer (client.rs), and applies and
//! rolls back a hotpatch with the `hotpatch` command (`--json`) again and
//! again. The hotpatch changes the answer to one *crafted* request (kind.rs,
//! one module per server); normal requests must be answered alike by both.
//!
//! A server process can retire at most `MAX_RETIRED_REGIONS` regions (every
//! rollback retires one), so the run is cut in *generations*: a fresh server
//! for every `--per-process` cycles. Each generation measures steady state
//! unpatched and patched side by side (order alternating), then cycles.

mod client;
mod faults;
mod generation;
mod hist;
mod http;
mod kind;
mod memcached;
mod nginx;
mod redis;
mod resp;
mod series;
mod server;
mod transition;

use anyhow::{Context, bail};
use clap::Parser;
use faults::{Fault, FaultCounts, Helper};
use generation::{Totals, generation};
use hist::Histogram;
use kind::ServerKind;
use serde::Serialize;
use series::{Bin, Mark};
use std::path::PathBuf;
use std::process::Command;
use transition::{Kind, Transition};

#[derive(Parser, Clone)]
#[command(about = "Applies and rolls back a hotpatch in a real server under a checking load")]
struct Args {
    /// The server executable (as shipped).
    #[arg(long)]
    server: PathBuf,
    /// Which server `--server` is: it picks the protocol and the crafted request.
    #[arg(long, value_enum, default_value_t = ServerKind::Redis)]
    server_kind: ServerKind,
    /// The hotpatch command.
    #[arg(long)]
    hotpatch: PathBuf,
    /// The hotpatch package (its fix changes the answer to the crafted request).
    #[arg(long)]
    package: PathBuf,
    /// Trusted publisher key(s) for `hotpatch apply --trust`.
    #[arg(long)]
    trust: PathBuf,
    /// Apply + rollback cycles in all.
    #[arg(long, default_value_t = 50)]
    cycles: u32,
    /// Cycles per server process (a rollback retires a region; the engine
    /// caps retired regions per process at 16, the steady phase uses one).
    #[arg(long, default_value_t = 15)]
    per_process: u32,
    /// Client connections (one thread each, one request in flight each).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Server threads: memcached's worker threads (-t), redis's I/O threads
    /// (--io-threads; 1: the main thread does all I/O), nginx's worker
    /// processes (`worker_processes`; each is patched, and the master).
    #[arg(long, alias = "io-threads", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Time between transitions while cycling, ms.
    #[arg(long, default_value_t = 250)]
    dwell_ms: u64,
    /// Length of each steady-state measurement (unpatched, patched), ms.
    #[arg(long, default_value_t = 1000)]
    steady_ms: u64,
    /// Every Nth cycle, the server is stopped (SIGSTOP) just before the apply
    /// and continued (SIGCONT) 20 ms later, while the engine works (0: never).
    #[arg(long, default_value_t = 0)]
    sigstop_every: u32,
    /// A fault running in (or beside) the server for the whole run, so that
    /// every transition meets it (see faults.rs).
    #[arg(long, value_enum, default_value_t = Fault::None)]
    fault: Fault,
    /// `hotpatch` commands run at once, one per process, for a server of
    /// several processes (nginx).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    parallel: u32,
    /// Also measure the engine's stop floor (stop + resume every thread,
    /// nothing else) on the server once per cycle.
    #[arg(long)]
    floor: bool,
    /// Write the full report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Latency {
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

fn latency(h: &Histogram) -> Latency {
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    Latency {
        requests: h.count(),
        p50_us: us(h.quantile(0.5)),
        p99_us: us(h.quantile(0.99)),
        p999_us: us(h.quantile(0.999)),
        max_us: us(h.max()),
    }
}

#[derive(Serialize)]
struct Pause {
    transitions: usize,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    command_p50_ms: f64,
    command_max_ms: f64,
    engine_p50_ms: u64,
    /// Transitions that found a thread inside a replaced function at least once.
    with_retries: usize,
    max_retries: u64,
}

fn percentile(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn pause(ts: &[&Transition]) -> Pause {
    let mut p: Vec<u64> = ts.iter().map(|t| t.pause_us).collect();
    let mut c: Vec<u64> = ts.iter().map(|t| (t.command_ms * 1000.0) as u64).collect();
    let mut e: Vec<u64> = ts.iter().map(|t| t.engine_ms).collect();
    Pause {
        transitions: ts.len(),
        p50_us: percentile(&mut p, 0.5),
        p99_us: percentile(&mut p, 0.99),
        max_us: p.iter().copied().max().unwrap_or(0),
        command_p50_ms: percentile(&mut c, 0.5) as f64 / 1000.0,
        command_max_ms: c.iter().copied().max().unwrap_or(0) as f64 / 1000.0,
        engine_p50_ms: percentile(&mut e, 0.5),
        with_retries: ts.iter().filter(|t| t.retries > 0).count(),
        max_retries: ts.iter().map(|t| t.retries).max().unwrap_or(0),
    }
}

#[derive(Serialize)]
struct Report {
    date: String,
    server: String,
    server_kind: ServerKind,
    package: String,
    cycles: u32,
    generations: u32,
    clients: usize,
    threads: u32,
    server_threads: u64,
    dwell_ms: u64,
    steady_ms: u64,
    sigstop_every: u32,
    fault: Fault,
    fault_counts: FaultCounts,
    /// Processes per server, each patched (nginx: the master and its workers).
    processes: usize,
    parallel: u32,
    requests: u64,
    crafted_requests: u64,
    failed: u64,
    wrong_version: u64,
    crafted_checked_against_a_completed_switch: u64,
    control_requests: u64,
    control_failed: u64,
    transitions_failed: usize,
    server_deaths: u32,
    region_accounting_errors: u32,
    failure_examples: Vec<String>,
    transition_errors: Vec<String>,
    pause_apply: Pause,
    pause_rollback: Pause,
    pause_all: Pause,
    pause_with_sigstop: Option<Pause>,
    floor_p50_us: Option<u64>,
    floor_p99_us: Option<u64>,
    latency_steady_unpatched: Latency,
    latency_steady_patched: Latency,
    /// Normal requests (as in steady state) sent within 500 ms of a transition.
    latency_around_transitions: Latency,
    /// Crafted requests within 500 ms of a transition (not in steady state).
    latency_around_transitions_crafted: Latency,
    /// Every request in flight while a `hotpatch` command ran.
    latency_overlapping_a_transition: Latency,
    throughput_unpatched_per_s: f64,
    throughput_patched_per_s: f64,
    /// Pooled: all patched steady requests per second over all unpatched.
    throughput_ratio: f64,
    /// The same ratio per server process (side by side), median and range.
    throughput_ratio_median_per_process: f64,
    throughput_ratio_min: f64,
    throughput_ratio_max: f64,
    /// Requests and latency per 100 ms of the whole run (steady windows included).
    series: Vec<Bin>,
    /// Every switch: its commands in all the server's processes.
    marks: Vec<Mark>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.per_process == 0 || args.per_process > 15 {
        bail!("--per-process must be 1..=15 (the engine retires at most 16 regions per process)");
    }
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let scratch = std::env::temp_dir().join(format!("hotpatch-proof-fault.{}", std::process::id()));
    let helper = matches!(args.fault, Fault::Threads | Fault::ForkExec).then(|| Helper::build(&scratch)).transpose()?;
    let mut totals = Totals::default();
    let mut left = args.cycles;
    let mut g = 0;
    while left > 0 {
        let n = left.min(args.per_process);
        let done = generation(&args, g, n, helper.as_ref(), &mut totals).with_context(|| format!("generation {g}"));
        if let Err(e) = done {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
        eprintln!(
            "generation {g}: {n} cycles, {} requests so far, {} failed, {} wrong",
            totals.requests, totals.failures, totals.wrong
        );
        left -= n;
        g += 1;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let report = report(&args, &totals);
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{text}");
    let bad = report.failed
        + report.wrong_version
        + report.control_failed
        + report.transitions_failed as u64
        + report.server_deaths as u64
        + report.region_accounting_errors as u64;
    if bad > 0 {
        bail!(
            "{} failed, {} wrong, {} control failed, {} transitions failed, {} server deaths, {} region errors",
            report.failed,
            report.wrong_version,
            report.control_failed,
            report.transitions_failed,
            report.server_deaths,
            report.region_accounting_errors
        );
    }
    Ok(())
}

/// The figures of the whole run, from every generation's totals.
fn report(args: &Args, totals: &Totals) -> Report {
    let all: Vec<&Transition> = totals.transitions.iter().filter(|t| t.ok).collect();
    let of = |k: Kind| all.iter().copied().filter(|t| t.kind == k && !t.sigstop).collect::<Vec<_>>();
    let stopped: Vec<&Transition> = all.iter().copied().filter(|t| t.sigstop).collect();
    let tu = totals.steady_unpatched.count() as f64 / totals.steady_unpatched_s.max(1e-9);
    let tp = totals.steady_patched.count() as f64 / totals.steady_patched_s.max(1e-9);
    let mut floor = totals.floor_us.clone();
    let mut ratios = totals.generation_ratios.clone();
    ratios.sort_by(f64::total_cmp);
    Report {
        date: now_utc(),
        server: args.server.display().to_string(),
        server_kind: args.server_kind,
        package: args.package.display().to_string(),
        cycles: args.cycles,
        generations: totals.generations,
        clients: args.clients,
        threads: args.threads,
        server_threads: totals.threads_seen,
        dwell_ms: args.dwell_ms,
        steady_ms: args.steady_ms,
        sigstop_every: args.sigstop_every,
        fault: args.fault,
        fault_counts: totals.faults.clone(),
        processes: totals.processes,
        parallel: args.parallel,
        requests: totals.requests,
        crafted_requests: totals.crafted,
        failed: totals.failures,
        wrong_version: totals.wrong,
        crafted_checked_against_a_completed_switch: totals.checked_after_switch,
        control_requests: totals.control_requests,
        control_failed: totals.control_failures,
        transitions_failed: totals.transitions.iter().filter(|t| !t.ok).count(),
        server_deaths: totals.server_deaths,
        region_accounting_errors: totals.leaked_regions,
        failure_examples: totals.failure_examples.clone(),
        transition_errors: totals.transitions.iter().filter_map(|t| t.error.clone()).take(10).collect(),
        pause_apply: pause(&of(Kind::Apply)),
        pause_rollback: pause(&of(Kind::Rollback)),
        pause_all: pause(&all.iter().copied().filter(|t| !t.sigstop).collect::<Vec<_>>()),
        pause_with_sigstop: (!stopped.is_empty()).then(|| pause(&stopped)),
        floor_p50_us: (!floor.is_empty()).then(|| percentile(&mut floor, 0.5)),
        floor_p99_us: (!floor.is_empty()).then(|| percentile(&mut floor, 0.99)),
        latency_steady_unpatched: latency(&totals.steady_unpatched),
        latency_steady_patched: latency(&totals.steady_patched),
        latency_around_transitions: latency(&totals.around),
        latency_around_transitions_crafted: latency(&totals.around_crafted),
        latency_overlapping_a_transition: latency(&totals.at_transition),
        throughput_unpatched_per_s: tu.round(),
        throughput_patched_per_s: tp.round(),
        throughput_ratio: round3(tp / tu.max(1e-9)),
        throughput_ratio_median_per_process: round3(ratios.get(ratios.len() / 2).copied().unwrap_or(0.0)),
        throughput_ratio_min: round3(ratios.first().copied().unwrap_or(0.0)),
        throughput_ratio_max: round3(ratios.last().copied().unwrap_or(0.0)),
        series: totals.series.clone(),
        marks: totals.marks.clone(),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
