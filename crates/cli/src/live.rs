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
pub struct ApplyArgs {
    /// Process to patch.
    #[arg(long)]
    pid: i32,
    /// The hotpatch package.
    file: PathBuf,
    /// Trusted publisher key (.pub) or directory of them.
    #[arg(long, default_value = DEFAULT_TRUST)]
    trust: PathBuf,
    /// Seconds to keep retrying while a thread is inside a function being replaced.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

fn timeout(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow::anyhow!("--timeout must be a non-negative number of seconds"))
}

pub fn apply(args: ApplyArgs, out: &Output) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read package {}", args.file.display()))?;
    let trust = hotpatch_agent::load_trust(&args.trust)?;
    let package = hotpatch_format::verify(&bytes, &trust)
        .with_context(|| format!("{} failed verification; nothing was changed", args.file.display()))?;
    let opts = ApplyOptions { timeout: timeout(args.timeout)? };
    let report = hotpatch_engine::apply(args.pid, &package, &opts)
        .with_context(|| format!("hotpatch {} not applied to process {}", package.manifest.patch_id, args.pid))?;
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
        return Ok(());
    }
    let rows: Vec<Vec<String>> = applied
        .iter()
        .map(|a| {
            vec![
                a.pid.to_string(),
                a.record.patch_id.clone(),
                a.record.level.to_string(),
                a.record.target_file.clone(),
                a.functions.join(","),
                if a.active { out.good("active") } else { out.bad("inactive") },
            ]
        })
        .collect();
    out.table(&["PID", "PATCH", "LEVEL", "TARGET", "FUNCTIONS", "STATE"], &rows);
    Ok(())
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
}

pub fn rollback(args: RollbackArgs, out: &Output) -> anyhow::Result<()> {
    let opts = ApplyOptions { timeout: timeout(args.timeout)? };
    let report = hotpatch_engine::rollback(args.pid, args.patch_id.as_deref(), &opts)
        .with_context(|| format!("rollback in process {} failed; nothing was changed", args.pid))?;
    if out.json {
        return out.print_json(&report);
    }
    println!("{} {} level {} in process {}", out.good("rolled back"), report.patch_id, report.level, report.pid);
    out.fields(&[
        ("functions", report.functions.join(", ")),
        ("pause", format!("{} µs across {} threads ({} retries)", report.pause_us, report.threads, report.retries)),
    ]);
    Ok(())
}
