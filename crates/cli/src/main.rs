//! `hotpatch`: the machine-side command. Publishers use it to make and sign
//! hotpatches; operators use it to inspect, verify and apply them.

mod build;
mod catalog;
mod console;
mod demo;
mod keys;
mod libraries;
mod live;
mod machine;
mod output;
mod package;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "hotpatch", version, about = "Rebootless security updates for running Linux processes")]
struct Cli {
    /// Print machine-readable JSON instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a publisher key pair (the secret file is created mode 0600).
    Keygen(keys::KeygenArgs),
    /// Build a signed hotpatch from a source fix (or two object trees), for the baseline as shipped.
    Build(Box<build::BuildArgs>),
    /// Pack a replacement object into a signed hotpatch for a baseline.
    Pack(package::PackArgs),
    /// Sign the publisher's catalog metadata or a revocation (for the control plane to pass on to agents).
    Catalog(catalog::CatalogArgs),
    /// Show what a hotpatch package contains (does not check the signature).
    Inspect(package::InspectArgs),
    /// Check a package's signature against trusted publisher keys.
    Verify(package::VerifyArgs),
    /// Apply a hotpatch to a running process, without restarting it.
    Apply(live::ApplyArgs),
    /// Show the hotpatches applied in running processes (read from the processes themselves).
    Status(live::StatusArgs),
    /// Restore a process's original code and remove the hotpatch.
    Rollback(live::RollbackArgs),
    /// Build a sample service, patch it live, show the change, roll back (needs root and gcc).
    Demo,
    /// Run the agent daemon (no flags), enroll with a control plane, or check in once.
    Agent(hotpatch_agent::cli::AgentArgs),
    /// Check the machine's prerequisites for hotpatching (exit 1 when not ready).
    Readiness(machine::ReadinessArgs),
    /// Running processes against a catalog: up to date, hotpatch available, or restart required.
    Scan(machine::ScanArgs),
    /// Finish or undo what an interrupted apply left, from the processes and the journal.
    Repair(machine::RepairArgs),
    /// A numbered menu for an operator at the machine: status, readiness, scan,
    /// apply, roll back, enrollment, settings.
    Console(console::ConsoleArgs),
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away.
    // SAFETY: resetting a signal disposition at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTPATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // No colour codes in logs, pipes and the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let out = output::Output::new(cli.json);
    let result = match cli.command {
        Command::Keygen(args) => keys::keygen(args, &out),
        Command::Build(args) => build::build(*args, &out),
        Command::Pack(args) => package::pack(args, &out),
        Command::Catalog(args) => catalog::catalog(args, &out),
        Command::Inspect(args) => package::inspect(args, &out),
        Command::Verify(args) => package::verify(args, &out),
        Command::Apply(args) => live::apply(args, &out),
        Command::Status(args) => live::status(args, &out),
        Command::Rollback(args) => live::rollback(args, &out),
        Command::Demo => demo::demo(&out),
        Command::Agent(args) => hotpatch_agent::cli::run(args),
        Command::Readiness(args) => machine::readiness(args, &out),
        Command::Scan(args) => machine::scan(args, &out),
        Command::Repair(args) => machine::repair(args, &out),
        Command::Console(args) => console::console(args, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            out.error(&err);
            ExitCode::FAILURE
        }
    }
}
