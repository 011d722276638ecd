//! `hotpatch agent ...`: the arguments and the entry point the CLI crate calls.

use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Enroll with the control plane at URL using a one-time enrollment TOKEN.
    #[arg(long, num_args = 2, value_names = ["URL", "TOKEN"])]
    pub enroll: Option<Vec<String>>,
    /// Check in once: report, apply what is assigned, report the results.
    #[arg(long)]
    pub once: bool,
    /// Where the machine key and agent state live.
    #[arg(long, default_value = crate::trust::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Trusted publisher key (.pub) or a directory of them; hotpatches that do not verify are never applied.
    #[arg(long, default_value = crate::trust::DEFAULT_TRUST_DIR)]
    pub trust: PathBuf,
    /// With --enroll: a PEM file of the CA that signed the server's certificate
    /// (a private CA); remembered for every later check-in.
    #[arg(long, requires = "enroll")]
    pub ca_cert: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.enroll.is_none() && !args.once {
        anyhow::bail!(
            "nothing to do: give --enroll URL TOKEN and/or --once (the long-running daemon is not part of this release)"
        );
    }
    crate::trust::prepare_state_dir(&args.state_dir)?;
    if let Some(v) = &args.enroll {
        let (url, token) = match v.as_slice() {
            [url, token] => (url, token),
            _ => anyhow::bail!("--enroll needs URL and TOKEN"),
        };
        let cred = crate::enroll(url, token, &args.state_dir, args.ca_cert.as_deref())?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "enrolled": true, "machine_id": cred.machine_id, "server": cred.server })
            );
        } else {
            println!(
                "enrolled as machine {} with {}; machine key stored in {} (it never leaves this machine)",
                cred.machine_id,
                cred.server,
                args.state_dir.display()
            );
        }
    }
    if args.once {
        let trust = crate::load_trust(&args.trust)?;
        let outcome = crate::check_in_once(&args.state_dir, &trust)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
        } else {
            print!("{}", crate::work::describe(&outcome));
        }
        if outcome.results.iter().any(|r| r.status == "failed") {
            anyhow::bail!("some assigned work failed (reported to the server)");
        }
    }
    Ok(())
}
