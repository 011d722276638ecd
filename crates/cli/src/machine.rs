//! The operator's commands on the machine: `readiness`, `scan` and `repair`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use hotpatch_agent::readiness::{self, State};
use hotpatch_agent::trust::{DEFAULT_STATE_DIR, DEFAULT_TRUST_DIR};

use crate::output::Output;

#[derive(Args)]
pub struct ReadinessArgs {
    /// The trust directory to check.
    #[arg(long, default_value = DEFAULT_TRUST_DIR)]
    trust: PathBuf,
    /// The agent's state directory to check.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// Prints every check; exits 1 (after printing) when a required one failed.
pub fn readiness(args: ReadinessArgs, out: &Output) -> anyhow::Result<()> {
    let paths = readiness::Paths { trust_dir: &args.trust, state_dir: &args.state_dir };
    let report = readiness::assess(&paths, &readiness::Policy::default());
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

fn print_readiness(report: &readiness::Readiness, out: &Output) {
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
