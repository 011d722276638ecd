//! The one error type of the HTTP API: every failure becomes a status code and a
//! JSON body `{"error": "..."}` that says what was wrong.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    /// A 503 "try again" when the database is away or busy (see `database_unavailable`),
    /// else a 500; either way the body hides the driver's text, which goes to the log.
    #[error("{}", database_message(.0))]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sql(e) => ApiError::Database(e),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<getrandom::Error> for ApiError {
    fn from(e: getrandom::Error) -> Self {
        ApiError::Internal(format!("no randomness: {e}"))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::Internal(format!("stored JSON unreadable: {e}"))
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Database(e) if database_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(e) if unique_violation(e) => StatusCode::CONFLICT,
            ApiError::Database(e) if nul_in_text(e) => StatusCode::BAD_REQUEST,
            ApiError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            // A database outage fails every request until it is over: a warning each, with the cause.
            ApiError::Database(cause) if status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(error = %self, %cause, "request failed")
            }
            ApiError::Database(cause) if status.is_server_error() => {
                tracing::error!(error = %self, %cause, "request failed")
            }
            _ if status.is_server_error() => tracing::error!(error = %self, "request failed"),
            _ => {}
        }
        let body = serde_json::json!({ "error": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

fn database_message(e: &sqlx::Error) -> &'static str {
    if database_unavailable(e) {
        "database unavailable, try again"
    } else if unique_violation(e) {
        "already exists: another request created it at the same moment"
    } else if nul_in_text(e) {
        "text must not contain NUL characters (\\u0000)"
    } else {
        "database error"
    }
}

/// A unique index refused a row: two requests created the same thing at once
/// and this one came second (the checks before the insert saw nothing yet).
pub fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// PostgreSQL refused text holding a NUL character (SQLSTATE 22021). Requests are
/// checked for NUL before they get here (`api::json`, `refuse_nul_in_uri`); this
/// keeps any other way in (a signed package's manifest) a 400 instead of a 500.
pub fn nul_in_text(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some_and(|pg| pg.code() == "22021"))
}

/// The database cannot be reached or asks the client to come back: the server is
/// down or restarting, the connection broke, no pooled connection came free within
/// the acquire timeout, or the transaction lost a race it may win when retried.
/// The pool reconnects by itself, so the same request succeeds once this passes.
pub fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // Class 08 connection exception; too many connections; shutting down,
                // crashed, starting up; serialization failure, deadlock; a read-only
                // standby (a failover in progress); our lock or statement timeout
                // (db.rs) ran out behind another transaction.
                let code = pg.code();
                code.starts_with("08")
                    || matches!(
                        code,
                        "53300" | "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "25006" | "55P03" | "57014"
                    )
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), also as extended codes.
                db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6))
            } else {
                false
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_503_other_database_errors_500() {
        let reset = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        for e in [reset, sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            let e = ApiError::Database(e);
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.to_string(), "database unavailable, try again");
        }
        let e = ApiError::Database(sqlx::Error::RowNotFound);
        assert_eq!((e.status(), e.to_string()), (StatusCode::INTERNAL_SERVER_ERROR, "database error".to_string()));
    }

    /// Through the `Any` driver as the server uses it: a write that finds the SQLite
    /// file locked by another writer is "try again", a constraint violation is not.
    #[test]
    fn a_locked_sqlite_database_is_503() {
        use sqlx::{Connection, Executor};
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            sqlx::any::install_default_drivers();
            let mut holder = sqlx::AnyConnection::connect(&url).await.expect("connect");
            holder.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)").await.expect("create");
            holder.execute("INSERT INTO t VALUES (1)").await.expect("insert");
            let mut other = sqlx::AnyConnection::connect(&url).await.expect("connect");
            other.execute("PRAGMA busy_timeout = 0").await.expect("pragma");
            let duplicate = other.execute("INSERT INTO t VALUES (1)").await.expect_err("duplicate key");
            assert!(!database_unavailable(&duplicate), "{duplicate}");
            let raced = ApiError::Database(duplicate);
            assert_eq!(raced.status(), StatusCode::CONFLICT, "a lost creation race is a 409: {raced}");
            assert!(raced.to_string().contains("already exists"), "{raced}");
            holder.execute("BEGIN IMMEDIATE").await.expect("begin");
            let locked = other.execute("INSERT INTO t VALUES (2)").await.expect_err("locked");
            assert!(database_unavailable(&locked), "{locked}");
        });
    }
}
