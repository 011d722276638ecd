//! The operator's commands on the machine: `readiness`, `scan` and `repair`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use hotpatch_agent::readiness::{self, State};
use hotpatch_agent::trust::{DEFAULT_CONFIG, DEFAULT_STATE_DIR, DEFAULT_TRUST_DIR};

use crate::output::Output;

#[derive(Args)]
pub struct ReadinessArgs {
    /// The trust directory to check [default: the configuration's, else /etc/hotpatch/trusted-keys].
    #[arg(long)]
    trust: Option<PathBuf>,
    /// The agent's state directory to check [default: the configuration's, else /var/lib/hotpatch].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The agent's configuration (its required_readiness is the policy)
    /// [default: /etc/hotpatch/agent.toml, if present].
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Prints every check; exits 1 (after printing) when a required one failed.
pub fn readiness(args: ReadinessArgs, out: &Output) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => hotpatch_agent::config::Config::load(path, true)?,
        None => hotpatch_agent::config::Config::load(std::path::Path::new(DEFAULT_CONFIG), false)?,
    };
    let trust_dir = args.trust.unwrap_or_else(|| config.trust_dir.clone());
    let state_dir = args.state_dir.unwrap_or_else(|| config.state_dir.clone());
    let paths = readiness::Paths { trust_dir: &trust_dir, state_dir: &state_dir };
    let report = readiness::assess(&paths, &config.readiness_policy());
    if out.json {
        out.print_json(&report)?;
    } else {
        print_readiness(&report, out);
    }
    if !report.ready {
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
    Ok(())
}

fn paint(state: State, out: &Output) -> String {
    match state {
        State::Ok => out.good("ok"),
        State::Failed => out.bad("FAILED"),
        other => other.as_str().to_string(),
    }
}

pub(crate) fn print_readiness(report: &readiness::Readiness, out: &Output) {
    let verdict = if report.ready { out.good("ready") } else { out.bad("not ready") };
    println!("{} for hotpatching", verdict);
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| {
            vec![
                c.name.to_string(),
                paint(c.state, out),
                if c.required { "required".into() } else { "advisory".into() },
                c.detail.clone(),
            ]
        })
        .collect();
    out.table(&["CHECK", "STATE", "POLICY", "DETAIL"], &rows);
    for c in report.checks.iter().filter(|c| c.fix.is_some()) {
        println!("{}: {} (why: {})", c.name, c.fix.as_deref().unwrap_or_default(), c.why);
    }
    if report.kernel_livepatches.is_empty() {
        println!("kernel livepatch modules: none");
    }
    for l in &report.kernel_livepatches {
        let flag = |v: Option<bool>| v.map_or("unknown", |b| if b { "yes" } else { "no" });
        println!("kernel livepatch {}: enabled {}, in transition {}", l.name, flag(l.enabled), flag(l.transition));
    }
}

#[derive(Args)]
pub struct ScanArgs {
    /// A directory of signed .hpatch packages to scan against (default: the
    /// control plane this machine is enrolled with).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Trusted publisher keys: packages of the catalog must verify against them.
    #[arg(long, default_value = DEFAULT_TRUST_DIR)]
    trust: PathBuf,
    /// The agent's state directory (enrollment).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Allow plain http:// to a control plane on another machine (like the agent's).
    #[arg(long)]
    insecure_http: bool,
}

pub fn scan(args: ScanArgs, out: &Output) -> anyhow::Result<()> {
    use hotpatch_agent::scan::{self, DirCatalog, Source};
    let report = match &args.catalog {
        Some(dir) => {
            let trust = hotpatch_agent::load_trust(&args.trust)?;
            let catalog = DirCatalog::load(dir, &trust)?;
            scan::scan(&Source::Dir(&catalog))
        }
        None => {
            if hotpatch_agent::state::load_credential(&args.state_dir).is_err() {
                anyhow::bail!(
                    "no catalog: give --catalog DIR (signed .hpatch packages), or enroll this machine \
                     (hotpatch agent --enroll URL TOKEN; state in {})",
                    args.state_dir.display()
                );
            }
            hotpatch_agent::trust::check_safe(&args.state_dir, "state directory")?;
            let (base, answer) = hotpatch_agent::work::fetch_answer_with(&args.state_dir, args.insecure_http)?;
            scan::scan(&Source::Server { base, answer: &answer })
        }
    };
    if out.json {
        return out.print_json(&report);
    }
    print_scan(&report, out);
    Ok(())
}

pub(crate) fn print_scan(report: &hotpatch_agent::scan::ScanReport, out: &Output) {
    use hotpatch_agent::scan::Status;
    println!("catalog: {}", report.catalog);
    let rows: Vec<Vec<String>> = report
        .targets
        .iter()
        .map(|t| {
            let status = t.verdict.status.describe(t.verdict.level);
            let status = match t.verdict.status {
                Status::UpToDate => out.good(&status),
                Status::HotpatchAvailable | Status::RestartRequired => out.bad(&status),
                Status::NotInCatalog => status,
            };
            let pids: Vec<String> = t.processes.iter().map(|p| p.to_string()).collect();
            vec![
                t.path.clone(),
                t.build_id.chars().take(12).collect(),
                t.applied_level.map_or("-".into(), |l| l.to_string()),
                status,
                pids.join(", "),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no running target is in the catalog");
    } else {
        out.table(&["TARGET", "BUILD-ID", "LEVEL", "STATUS", "PROCESSES"], &rows);
        for t in &report.targets {
            println!("  {}: {}", t.path, t.verdict.reason);
        }
    }
    println!("{} other running targets: nothing in the catalog, nothing applied", report.other_targets);
    let stale: Vec<_> = report.restart_required().collect();
    if !stale.is_empty() {
        println!("{}", out.bold("restart required (code replaced or deleted on disk since the process started):"));
    }
    for p in stale {
        for f in &p.stale {
            println!("  {}: {} {}", p.process, f.path, f.change);
        }
    }
    println!("kernel: {}", report.kernel.reason);
    for problem in &report.problems {
        println!("note: {problem}");
    }
}

#[derive(Args)]
pub struct RepairArgs {
    /// The agent's state directory (its journal).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Seconds to keep retrying while a thread is inside code being switched or unmapped.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Only this process (repeatable; default: every process).
    #[arg(long)]
    pid: Vec<i32>,
    /// Leave alone regions written less than this many seconds ago (an apply
    /// by a program that does not take the machine lock may be in progress).
    #[arg(long, default_value_t = 60)]
    min_age: u64,
}

/// Completes half-switched patches, unmaps regions nothing leads to, and
/// closes the journal's open intents; exits 1 if something could not be repaired.
pub fn repair(args: RepairArgs, out: &Output) -> anyhow::Result<()> {
    let timeout = std::time::Duration::try_from_secs_f64(args.timeout)
        .map_err(|_| anyhow::anyhow!("--timeout must be a non-negative number of seconds"))?;
    if args.state_dir.exists() {
        hotpatch_agent::trust::check_safe(&args.state_dir, "state directory")?;
    }
    let opts = hotpatch_agent::repair::RepairOptions {
        pids: (!args.pid.is_empty()).then(|| args.pid.clone()),
        min_age: std::time::Duration::from_secs(args.min_age),
        timeout,
    };
    let report = hotpatch_agent::repair::repair(&args.state_dir, &opts);
    if out.json {
        out.print_json(&report)?;
    } else {
        if report.regions.is_empty() && report.intents.is_empty() && report.errors.is_empty() {
            println!("nothing to repair: every process is fully patched or untouched");
        }
        for r in &report.regions {
            println!("{} {} level {} in {} ({}): {}", r.action, r.patch_id, r.level, r.pid, r.comm, r.detail);
        }
        for i in &report.intents {
            println!("journal: {} of {} in {}: {}", i.op, i.patch_id, i.pid, i.finding);
        }
        for e in &report.errors {
            println!("{}: {e}", out.bad("error"));
        }
    }
    let failed = report.regions.iter().any(|r| r.action == "failed") || !report.errors.is_empty();
    if failed {
        anyhow::bail!("some processes could not be repaired (see above)");
    }
    Ok(())
}
