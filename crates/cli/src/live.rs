//! `hotpatch apply`, `status` and `rollback`: the engine on running processes.

use crate::output::Output;
use anyhow::Context;
use clap::Args;
use hotpatch_engine::{AppliedPatch, ApplyOptions};
use hotpatch_format::TrustStore;
use std::path::PathBuf;
use std::time::Duration;

/// Where machines keep the publisher keys they trust by default.
pub const DEFAULT_TRUST: &str = "/etc/hotpatch/trusted-keys";

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
    /// Also scan the process's writable memory for return addresses into the
    /// code being replaced (coroutine and fiber stacks), inside the pause.
    #[arg(long)]
    scan_memory: bool,
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

fn timeout(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow::anyhow!("--timeout must be a non-negative number of seconds"))
}

pub fn apply(args: ApplyArgs, out: &Output) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read package {}", args.file.display()))?;
    let trust = TrustStore::load(&args.trust)
        .with_context(|| format!("cannot load trusted keys from {}", args.trust.display()))?;
    let package = hotpatch_format::verify(&bytes, &trust)
        .with_context(|| format!("{} failed verification; nothing was changed", args.file.display()))?;
    let opts = ApplyOptions { timeout: timeout(args.timeout)?, scan_memory: args.scan_memory };
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
    out.fields(&scan_field(report.memory_scan));
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
    let retired = hotpatch_engine::retired_total(&applied);
    if retired.regions > 0 {
        println!(
            "{} retired regions ({} KiB) stay mapped until their processes exit: a suspended stack may still return into them",
            retired.regions,
            retired.bytes / 1024
        );
    }
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
    /// Also scan writable memory for user-level stacks (see `apply --scan-memory`).
    #[arg(long)]
    scan_memory: bool,
}

pub fn rollback(args: RollbackArgs, out: &Output) -> anyhow::Result<()> {
    let opts = ApplyOptions { timeout: timeout(args.timeout)?, scan_memory: args.scan_memory };
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
    out.fields(&scan_field(report.memory_scan));
    Ok(())
}
