//! The database handle: one code path over SQLite (embedded, the default) and
//! PostgreSQL (several replicas over one database), through sqlx's `Any` driver.
//!
//! Queries use `$1`-style placeholders, which both SQLite and PostgreSQL accept.
//! Every aggregate that PostgreSQL would widen to NUMERIC is cast back to BIGINT,
//! because the `Any` driver cannot decode NUMERIC.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::schema;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL {0:?} is neither sqlite:// nor postgres://")]
    UnknownScheme(String),
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database files: {0}")]
    Files(std::io::Error),
    #[error("schema migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
}

/// Per-connection bounds on PostgreSQL: a lock wait and a statement each end
/// within these (answered as 503, see `error::database_unavailable`). Schema
/// migrations lift them for their own connection (see `schema::migrate`).
pub const POSTGRES_TIMEOUTS: &str = "SET lock_timeout = '15s'; SET statement_timeout = '60s'";

#[derive(Clone)]
pub struct Db {
    /// For reads. On PostgreSQL also for writes.
    pub pool: AnyPool,
    /// For writes. On SQLite one connection: SQLite has one writer at a time, and
    /// a transaction that starts reading and then writes fails with "database is
    /// locked" (no busy wait) when another writer got in between; queueing the
    /// writers in the pool instead keeps every write correct and latency flat.
    pub writer: AnyPool,
    pub backend: Backend,
}

impl Db {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::UnknownScheme(url.to_string()));
        };
        if backend == Backend::Sqlite {
            private_sqlite_files(url).map_err(DbError::Files)?;
        }
        let options = AnyConnectOptions::from_str(url)?;
        let pool = Self::pool_options(backend, max_connections).connect_with(options.clone()).await?;
        let writer = match backend {
            Backend::Sqlite => Self::pool_options(backend, 1).connect_with(options).await?,
            Backend::Postgres => pool.clone(),
        };
        let db = Db { pool, writer, backend };
        schema::migrate(&db).await?;
        Ok(db)
    }

    /// Survives a database restart: a pooled connection is pinged before use and
    /// replaced when it broke, and a request waits at most the acquire timeout for
    /// one (while the database is down, sqlx retries refused connects until then),
    /// then fails with a 503 "database unavailable, try again".
    fn pool_options(backend: Backend, max_connections: u32) -> AnyPoolOptions {
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(true);
        if backend == Backend::Postgres {
            // A request stuck behind another transaction's lock must end with a
            // clear 503, not hold its connection until the client gives up.
            pool_options = pool_options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(POSTGRES_TIMEOUTS).await?;
                    Ok(())
                })
            });
        }
        if backend == Backend::Sqlite {
            // WAL lets readers run beside the single writer; NORMAL sync is safe
            // under WAL (a crash loses at most the last transactions, never consistency).
            pool_options = pool_options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                         PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        pool_options
    }

    /// A transaction for changes (see `writer`).
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        self.writer.begin().await
    }

    /// The SQL type for binary columns, which the two backends name differently.
    pub fn blob_type(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "BLOB",
            Backend::Postgres => "BYTEA",
        }
    }
}

/// The file of a `sqlite://PATH?...` URL (None for an in-memory database).
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// The database holds the fleet's inventory, audit log and hashed credentials:
/// its file is made 0600 before SQLite opens it (SQLite gives its -wal and -shm
/// files the database file's mode), and a file an earlier version made readable
/// to others is narrowed, with a warning.
fn private_sqlite_files(url: &str) -> std::io::Result<()> {
    let Some(path) = sqlite_path(url) else { return Ok(()) };
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(std::io::Error::new(e.kind(), format!("creating {}: {e}", path.display()))),
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        narrow_to_owner(&file)?;
    }
    Ok(())
}

fn narrow_to_owner(file: &Path) -> std::io::Result<()> {
    let Ok(meta) = std::fs::metadata(file) else { return Ok(()) };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(file = %file.display(), mode = format!("{mode:o}"), "database file readable by others: narrowing to 0600");
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| std::io::Error::new(e.kind(), format!("chmod 0600 {}: {e}", file.display())))?;
    }
    Ok(())
}
