//! `hotpatch apply`, `status` and `rollback`: the engine on running processes.

use crate::output::Output;
use anyhow::Context;
use clap::Args;
use hotpatch_engine::{AppliedPatch, ApplyOptions};
use std::path::PathBuf;
use std::time::Duration;

/// Where machines keep the publisher keys they trust: the agent's directory.
pub const DEFAULT_TRUST: &str = hotpatch_agent::trust::DEFAULT_TRUST_DIR;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["pid", "all"])))]
pub struct ApplyArgs {
    /// Process to patch.
    #[arg(long)]
    pid: Option<i32>,
    /// Every process that maps the hotpatch's target (below its level), each on its own.
    #[arg(long)]
    all: bool,
    /// The hotpatch package.
    file: PathBuf,
    /// Trusted publisher key (.pub) or directory of them.
    #[arg(long, default_value = DEFAULT_TRUST)]
    trust: PathBuf,
    /// Seconds to keep retrying while a thread is inside a function being replaced.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Also scan the process's writable memory for return addresses into the
    /// code being replaced (coroutine and fiber stacks), inside the pause.
    #[arg(long)]
    scan_memory: bool,
    /// Where the journal of intents and outcomes is kept (read by `hotpatch repair`).
    #[arg(long, default_value = hotpatch_agent::trust::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// One line on what `--scan-memory` read and how long it took (in the pause).
fn scan_field(scan: Option<hotpatch_engine::ScanReport>) -> Vec<(&'static str, String)> {
    scan.map(|s| {
        (
            "memory scan",
            format!("{} KiB in {} mappings, {} µs (inside the pause)", s.bytes / 1024, s.mappings, s.micros),
        )
    })
    .into_iter()
    .collect()
}

/// The journal, when the state directory can hold one. Without it apply still
/// works: repair reads what is applied from the processes themselves.
fn journal(state_dir: &std::path::Path) -> Option<hotpatch_agent::journal::Journal> {
    let opened = hotpatch_agent::trust::prepare_state_dir(state_dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(hotpatch_agent::journal::Journal::open(state_dir)?));
    match opened {
        Ok(j) => Some(j),
        Err(e) => {
            tracing::warn!(error = %e, "no journal for this apply");
            None
        }
    }
}

fn timeout(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow::anyhow!("--timeout must be a non-negative number of seconds"))
}

pub fn apply(args: ApplyArgs, out: &Output) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read package {}", args.file.display()))?;
    let trust = hotpatch_agent::load_trust(&args.trust)?;
    hotpatch_agent::trust::check_debug_roots()?;
    let package = hotpatch_format::verify(&bytes, &trust)
        .with_context(|| format!("{} failed verification; nothing was changed", args.file.display()))?;
    let opts = ApplyOptions { timeout: timeout(args.timeout)?, scan_memory: args.scan_memory };
    let mut journal = journal(&args.state_dir);
    let Some(pid) = args.pid else {
        return apply_all(&package, &opts, journal.as_mut(), out);
    };
    let m = &package.manifest;
    let id = journal.as_mut().and_then(|j| j.intent("apply", pid, &m.patch_id, m.level, &m.target.build_id).ok());
    let lock = hotpatch_agent::lock::shared();
    let applied = hotpatch_engine::apply(pid, &package, &opts);
    drop(lock);
    if let (Some(j), Some(id)) = (journal.as_mut(), id) {
        let detail = applied.as_ref().map_or_else(|e| e.to_string(), |_| "applied".to_string());
        let _ = j.outcome(id, applied.is_ok(), &detail);
    }
    let report =
        applied.with_context(|| format!("hotpatch {} not applied to process {pid}", package.manifest.patch_id))?;
    if out.json {
        return out.print_json(&report);
    }
    println!(
        "{} {} level {} to process {} ({})",
        out.good("applied"),
        report.patch_id,
        report.level,
        report.pid,
        report.target
    );
    if let Some(prev) = &report.replaced {
        println!("replaced level {} ({}) in the same transition", prev.level, prev.patch_id);
    }
    out.fields(&[
        ("functions", report.functions.join(", ")),
        ("pause", format!("{} µs across {} threads ({} retries)", report.pause_us, report.threads, report.retries)),
        ("region", format!("0x{:x} ({} bytes)", report.region_start, report.region_size)),
        ("total", format!("{} ms", report.total_ms)),
    ]);
    out.fields(&scan_field(report.memory_scan));
    warn_callback(report.callback_problem.as_ref());
    Ok(())
}

/// A post callback that did not complete: the transition stands.
fn warn_callback(problem: Option<&hotpatch_engine::callback::CallbackProblem>) {
    if let Some(p) = problem {
        tracing::warn!(callback = %p.callback, "{}", p.problem);
    }
}

/// `apply --all`: each process on its own; fails if any process failed.
fn apply_all(
    package: &hotpatch_format::VerifiedPackage,
    opts: &ApplyOptions,
    journal: Option<&mut hotpatch_agent::journal::Journal>,
    out: &Output,
) -> anyhow::Result<()> {
    let results: Vec<_> =
        hotpatch_agent::fleet::apply_everywhere(package, opts, journal).into_iter().filter(|r| !r.gone).collect();
    let failed = results.iter().filter(|r| !r.ok).count();
    if out.json {
        out.print_json(&results)?;
    } else if results.is_empty() {
        println!("no running process needs {} level {}", package.manifest.patch_id, package.manifest.level);
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                let state = if r.ok { out.good("applied") } else { out.bad("failed") };
                vec![r.pid.to_string(), r.comm.clone(), state, r.detail.clone()]
            })
            .collect();
        out.table(&["PID", "COMMAND", "RESULT", "DETAIL"], &rows);
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} process(es) not patched (the others were)", results.len());
    }
    Ok(())
}

#[derive(Args)]
pub struct StatusArgs {
    /// Only this process (default: every process).
    #[arg(long)]
    pid: Option<i32>,
}

pub fn status(args: StatusArgs, out: &Output) -> anyhow::Result<()> {
    let applied: Vec<AppliedPatch> = match args.pid {
        Some(pid) => hotpatch_engine::status(pid).with_context(|| format!("cannot read process {pid}"))?,
        None => hotpatch_engine::status_all(),
    };
    if out.json {
        return out.print_json(&applied);
    }
    if applied.is_empty() {
        println!("no hotpatch applied{}", args.pid.map(|p| format!(" in process {p}")).unwrap_or_default());
    } else {
        status_table(&applied, out);
    }
    if let Some(pid) = args.pid {
        shadow_usage(pid);
    }
    if args.pid.is_none() {
        machine_summary();
    }
    Ok(())
}

/// The shadow variables each applied hotpatch of `pid` keeps, if any.
fn shadow_usage(pid: i32) {
    for (patch_id, usage) in hotpatch_engine::shadow::usage_in(pid).unwrap_or_default() {
        println!("shadow variables of {patch_id}: {} objects, {} bytes", usage.objects, usage.bytes);
    }
}

/// What `status` without `--pid` adds for the whole machine: the last
/// check-in and the kernel's own livepatch modules.
fn machine_summary() {
    let state_dir = std::path::Path::new(hotpatch_agent::trust::DEFAULT_STATE_DIR);
    match hotpatch_agent::state::load_last_checkin(state_dir) {
        Ok(Some(last)) => match &last.error {
            None => println!("last check-in: {} (ok)", last.at_text()),
            Some(e) => println!("last check-in: {} failed: {e}", last.at_text()),
        },
        _ => println!("last check-in: none"),
    }
    let modules = hotpatch_agent::readiness::kernel_livepatches(std::path::Path::new("/sys/kernel/livepatch"));
    if modules.is_empty() {
        println!("kernel livepatch modules: none");
    }
    for m in modules {
        let on = |v: Option<bool>| v.map_or("unknown", |b| if b { "yes" } else { "no" });
        println!("kernel livepatch {}: enabled {}, in transition {}", m.name, on(m.enabled), on(m.transition));
    }
}

fn status_table(applied: &[AppliedPatch], out: &Output) {
    let rows: Vec<Vec<String>> = applied
        .iter()
        .map(|a| {
            vec![
                a.pid.to_string(),
                a.record.patch_id.clone(),
                a.record.level.to_string(),
                a.record.target_file.clone(),
                a.functions.join(","),
                match (a.active, a.record.retired) {
                    (_, Some(r)) => match r.replaced_by_level {
                        Some(level) => format!("retired (replaced by level {level})"),
                        None => "retired (rolled back)".to_owned(),
                    },
                    (true, None) => out.good("active"),
                    (false, None) => out.bad("inactive"),
                },
            ]
        })
        .collect();
    out.table(&["PID", "PATCH", "LEVEL", "TARGET", "FUNCTIONS", "STATE"], &rows);
    let retired = hotpatch_engine::retired_total(applied);
    if retired.regions > 0 {
        println!(
            "{} retired regions ({} KiB) stay mapped until their processes exit: a suspended stack may still return into them",
            retired.regions,
            retired.bytes / 1024
        );
    }
}

#[derive(Args)]
pub struct RollbackArgs {
    /// Process to roll back.
    #[arg(long)]
    pid: i32,
    /// The hotpatch to roll back (default: the only one applied).
    patch_id: Option<String>,
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Also scan writable memory for user-level stacks (see `apply --scan-memory`).
    #[arg(long)]
    scan_memory: bool,
    /// Where the journal of intents and outcomes is kept (read by `hotpatch repair`).
    #[arg(long, default_value = hotpatch_agent::trust::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// The applied hotpatch a rollback is about: the one named, or the only one
/// applied; `None` when the process does not say (the engine refuses then).
fn rollback_subject(pid: i32, patch_id: Option<&str>) -> Option<(String, String)> {
    let applied = hotpatch_engine::status(pid).ok()?;
    let mut live =
        applied.iter().filter(|a| a.record.retired.is_none() && patch_id.is_none_or(|id| a.record.patch_id == id));
    match (live.next(), live.next()) {
        (Some(one), None) => Some((one.record.patch_id.clone(), one.record.build_id.clone())),
        _ => None,
    }
}

pub fn rollback(args: RollbackArgs, out: &Output) -> anyhow::Result<()> {
    let opts = ApplyOptions { timeout: timeout(args.timeout)?, scan_memory: args.scan_memory };
    // Journaled like an apply: a rollback killed mid-way is finished by `hotpatch repair`.
    let rolled = match rollback_subject(args.pid, args.patch_id.as_deref()) {
        Some((patch_id, build_id)) => {
            let mut journal = journal(&args.state_dir);
            hotpatch_agent::fleet::rollback_one(args.pid, &patch_id, &build_id, &opts, journal.as_mut())
        }
        None => {
            let lock = hotpatch_agent::lock::shared();
            let rolled = hotpatch_engine::rollback(args.pid, args.patch_id.as_deref(), &opts);
            drop(lock);
            rolled
        }
    };
    let report = rolled.with_context(|| format!("rollback in process {} failed; nothing was changed", args.pid))?;
    if out.json {
        return out.print_json(&report);
    }
    println!("{} {} level {} in process {}", out.good("rolled back"), report.patch_id, report.level, report.pid);
    out.fields(&[
        ("functions", report.functions.join(", ")),
        ("pause", format!("{} µs across {} threads ({} retries)", report.pause_us, report.threads, report.retries)),
    ]);
    out.fields(&scan_field(report.memory_scan));
    warn_callback(report.callback_problem.as_ref());
    Ok(())
}
