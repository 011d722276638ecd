//! `hotpatch agent ...`: the arguments and the entry point the CLI crate calls.
//! Without `--enroll` or `--once` the agent runs as a daemon until stopped.

use std::path::{Path, PathBuf};

use crate::trust::{DEFAULT_CONFIG, DEFAULT_OPERATIONS_KEYS, DEFAULT_STATE_DIR, DEFAULT_TRUST_DIR};

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Enroll with the control plane at URL using a one-time enrollment TOKEN.
    #[arg(long, num_args = 2, value_names = ["URL", "TOKEN"])]
    pub enroll: Option<Vec<String>>,
    /// Check in once: report, apply what is assigned, report the results.
    #[arg(long)]
    pub once: bool,
    /// The daemon's configuration [default: /etc/hotpatch/agent.toml, if present].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the machine key and agent state live [default: /var/lib/hotpatch,
    /// or the configuration's state_dir].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Trusted publisher key (.pub) or a directory of them; hotpatches that do not
    /// verify are never applied [default: /etc/hotpatch/trusted-keys, or the
    /// configuration's trust_dir].
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// With --enroll: a PEM file of the CA that signed the server's certificate
    /// (a private CA); remembered for every later check-in.
    #[arg(long, requires = "enroll")]
    pub ca_cert: Option<PathBuf>,
    /// The organisation's operations keys (.pub or a directory): revocations they
    /// sign let a rollback the server lists be carried out [default:
    /// /etc/hotpatch/operations-keys if present, or the configuration's operations_keys].
    #[arg(long)]
    pub operations_keys: Option<PathBuf>,
    /// Allow plain http:// to a server that is not this machine (anyone on the
    /// path could read and change the exchange).
    #[arg(long)]
    pub insecure_http: bool,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.enroll.is_none() && !args.once {
        let overrides = crate::daemon::Overrides {
            state_dir: args.state_dir.clone(),
            trust_dir: args.trust.clone(),
            operations_keys: args.operations_keys.clone(),
            insecure_http: args.insecure_http,
        };
        let (path, required) = match &args.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        return Ok(crate::daemon::run(&path, required, overrides)?);
    }
    let state_dir = args.state_dir.clone().unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    crate::trust::prepare_state_dir(&state_dir)?;
    if let Some(v) = &args.enroll {
        enroll(v, &state_dir, &args)?;
    }
    if args.once {
        let trust_dir = args.trust.clone().unwrap_or_else(|| DEFAULT_TRUST_DIR.into());
        let operations = args.operations_keys.clone().unwrap_or_else(|| DEFAULT_OPERATIONS_KEYS.into());
        let keys = crate::guard::Keys {
            publishers: crate::load_trust(&trust_dir)?,
            operations: crate::trust::load_operations_keys(&operations)?,
        };
        let opts = crate::work::CheckInOptions { keys, insecure_http: args.insecure_http };
        let outcome = crate::work::check_in(&state_dir, &opts)?;
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

fn enroll(v: &[String], state_dir: &Path, args: &AgentArgs) -> anyhow::Result<()> {
    let (url, token) = match v {
        [url, token] => (url, token),
        _ => anyhow::bail!("--enroll needs URL and TOKEN"),
    };
    let cred = crate::enroll_with(url, token, state_dir, args.ca_cert.as_deref(), args.insecure_http)?;
    if args.json {
        println!("{}", serde_json::json!({ "enrolled": true, "machine_id": cred.machine_id, "server": cred.server }));
    } else {
        println!(
            "enrolled as machine {} with {}; machine key stored in {} (it never leaves this machine)",
            cred.machine_id,
            cred.server,
            state_dir.display()
        );
    }
    Ok(())
}
