//! `hotpatch-server`: the control plane binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hotpatch_format::TrustStore;
use hotpatch_server::{bootstrap, serve};
use tokio_rustls::TlsAcceptor;

#[derive(Parser)]
#[command(
    name = "hotpatch-server",
    about = "Fleet control plane for hotpatch: catalog, enrollment, deployments, compliance, billing, web UI"
)]
struct Cli {
    /// Directory for the embedded SQLite database and default trusted keys.
    #[arg(long, global = true, default_value = "/var/lib/hotpatch-server")]
    data: PathBuf,
    /// Database URL: postgres://user@host/db for PostgreSQL; default is SQLite in --data.
    #[arg(long, global = true)]
    database: Option<String>,
    /// Publisher public key (.pub) or a directory of them; default DATA/trust.
    #[arg(long, global = true)]
    trust: Option<PathBuf>,
    /// Largest number of database connections this replica opens.
    #[arg(long, global = true, default_value_t = 16)]
    db_connections: u32,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// PEM certificate chain; with --tls-key, serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mark the web session cookie Secure even when serving plain HTTP: for a
    /// server behind a proxy that terminates TLS (on with --tls-cert anyway).
    #[arg(long)]
    secure_cookies: bool,
    /// Free trial for organisations created at first start, in days.
    #[arg(long, default_value_t = 30)]
    trial_days: i64,
    /// Seconds a connection may take to send a request's head, also while it idles
    /// between requests (keep-alive); then it is closed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout: u64,
    /// Seconds a request body may pause between reads before the request fails.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_timeout: u64,
    /// Most connections open at once; default: what the open-file limit (ulimit -n)
    /// leaves after the database's share. Beyond it new connections wait to be accepted.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: Option<u64>,
    /// Most connections one client address may hold; default half of
    /// --max-connections. Beyond it a connection is answered 503 and closed. Behind
    /// a reverse proxy (every connection from its address) set it to --max-connections.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections_per_address: Option<u64>,
    /// Days of machine work history kept; older entries are pruned at start and hourly.
    #[arg(long, default_value_t = hotpatch_server::retention::DEFAULT_HISTORY_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    history_days: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Administration without the HTTP API.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an organisation (if new) and an admin user in it; prints the admin's API token once.
    Create {
        #[arg(long)]
        org: String,
        #[arg(long)]
        user: String,
        /// Free trial end for a new organisation (RFC 3339).
        #[arg(long)]
        trial_until: Option<String>,
    },
    /// Set an organisation's subscription (only the service operator may: no API
    /// user can entitle their own organisation); prints the result as JSON.
    Subscription {
        #[arg(long)]
        org: String,
        /// Subscribe from now on (true) or end the subscription now (false).
        #[arg(long)]
        active: Option<bool>,
        /// End of the free trial (RFC 3339), or "none" to end it.
        #[arg(long)]
        trial_until: Option<String>,
        /// Price per core per month in US cents (default 150).
        #[arg(long)]
        price_cents: Option<i64>,
    },
}

/// The data directory is made 0700: it holds the database. An existing one is
/// left as it is (it may be shared, like /tmp), with a warning when others can
/// enter it; the database file itself is 0600 either way (see `db`).
fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    let mode =
        std::fs::metadata(dir).with_context(|| format!("data directory {}", dir.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "data directory open to other users; 0700 is advised");
    }
    Ok(())
}

fn load_trust(path: &Path) -> anyhow::Result<TrustStore> {
    if !path.exists() {
        tracing::warn!(path = %path.display(), "no trusted publisher keys: hotpatch uploads will be refused");
        return Ok(TrustStore::from_keys(Vec::new()));
    }
    TrustStore::load(path).with_context(|| format!("loading trusted keys from {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // A bad certificate or key stops the start before anything is created or bootstrapped.
    let tls = match (&cli.command, &cli.run.tls_cert, &cli.run.tls_key) {
        (None, Some(c), Some(k)) => Some(serve::tls_acceptor(c, k)?),
        _ => None,
    };
    let url = match &cli.database {
        Some(u) => u.clone(),
        None => {
            create_data_dir(&cli.data)?;
            format!("sqlite://{}?mode=rwc", cli.data.join("hotpatch.db").display())
        }
    };
    let trust = load_trust(&cli.trust.clone().unwrap_or_else(|| cli.data.join("trust")))?;
    let state = hotpatch_server::open(&url, trust, cli.db_connections).await.context("opening the database")?;
    match cli.command {
        Some(Command::Admin { command: AdminCommand::Create { org, user, trial_until } }) => {
            let trial = match trial_until {
                None => None,
                Some(t) => Some(
                    hotpatch_server::util::parse_time(&t)
                        .with_context(|| format!("--trial-until {t:?} is not RFC 3339"))?,
                ),
            };
            let created =
                bootstrap::create_admin(&state.db, &org, &user, trial).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", created.token);
            eprintln!("admin {user:?} created in organisation {org:?}; the API token above is shown only once");
            Ok(())
        }
        Some(Command::Admin { command: AdminCommand::Subscription { org, active, trial_until, price_cents } }) => {
            let change = hotpatch_server::api::billing::SubscriptionChange {
                active,
                trial_until: trial_until.map(|t| if t == "none" { None } else { Some(t) }),
                price_cents_per_core_month: price_cents,
            };
            let (sub, entitled) =
                hotpatch_server::api::billing::change_subscription(&state.db, &org, &change, "operator:command-line")
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            let shown = hotpatch_server::api::billing::subscription_json(&sub, entitled);
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        None => {
            let mut limits = serve::Limits::for_process(cli.db_connections);
            limits.header_timeout = std::time::Duration::from_secs(cli.run.header_timeout);
            limits.body_timeout = std::time::Duration::from_secs(cli.run.body_timeout);
            if let Some(n) = cli.run.max_connections {
                limits.max_connections = usize::try_from(n)?;
                limits.max_per_address = limits.max_connections.div_ceil(2);
            }
            if let Some(n) = cli.run.max_connections_per_address {
                limits.max_per_address = usize::try_from(n)?;
            }
            run(state, cli.run, tls, limits).await
        }
    }
}

async fn run(
    state: hotpatch_server::AppState,
    args: RunArgs,
    tls: Option<TlsAcceptor>,
    limits: serve::Limits,
) -> anyhow::Result<()> {
    if bootstrap::org_count(&state.db).await.map_err(|e| anyhow::anyhow!("{e}"))? == 0 {
        let trial = hotpatch_server::util::now() + args.trial_days * 86_400;
        let created = bootstrap::create_admin(&state.db, "default", "admin", Some(trial))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Printed once on purpose, outside the log stream: it is a secret.
        eprintln!("==============================================================================");
        eprintln!("First start: created organisation \"default\" with admin user \"admin\".");
        eprintln!("Admin API token (shown only this once, stored hashed):");
        eprintln!("    {}", created.token);
        eprintln!("==============================================================================");
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    serve::warn_if_plain_public(addr, tls.is_some());
    let removed = hotpatch_server::retention::prune(&state.db, hotpatch_server::util::now(), args.history_days)
        .await
        .context("pruning work history")?;
    tracing::info!(removed, keep_days = args.history_days, "history pruned");
    let _pruning = hotpatch_server::retention::spawn_pruning(state.db.clone(), args.history_days);
    tracing::info!(%addr, tls = tls.is_some(), backend = ?state.db.backend, "hotpatch-server listening");
    // Browsers reach a TLS server over HTTPS only: its session cookie is Secure.
    let app = hotpatch_server::router(hotpatch_server::AppState {
        secure_cookies: tls.is_some() || args.secure_cookies,
        ..state
    });
    serve::serve_with(listener, tls, app, shutdown_signal(), limits).await?;
    Ok(())
}

/// SIGINT or SIGTERM (what systemd and container runtimes send): stop accepting,
/// finish requests in flight, exit.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
