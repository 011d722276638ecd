//! What ends with a credential or a user: the web sessions and sign-in links
//! made from a token or belonging to a user, and which users are still active.

use sqlx::Row;

use crate::error::{ApiError, ApiResult};

/// The id of the user `name` of the organisation, unless removed.
pub async fn active_user_id(conn: &mut sqlx::AnyConnection, org_id: &str, name: &str) -> ApiResult<String> {
    let row = sqlx::query("SELECT id FROM users WHERE org_id = $1 AND name = $2 AND removed_at IS NULL")
        .bind(org_id)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no user {name:?} in this organisation")))?;
    Ok(row.try_get(0)?)
}

/// Whose web sessions and sign-in links [`end_sessions`] deletes.
#[derive(Debug, Clone, Copy)]
pub enum SessionsOf<'a> {
    Token(&'a str),
    User(&'a str),
}

/// Deletes the web sessions and sign-in links of a token or a user; returns how
/// many sessions ended.
pub async fn end_sessions(conn: &mut sqlx::AnyConnection, of: SessionsOf<'_>) -> ApiResult<u64> {
    // The column is one of two constants, never caller input.
    let (column, value) = match of {
        SessionsOf::Token(id) => ("token_id", id),
        SessionsOf::User(id) => ("user_id", id),
    };
    let sessions = sqlx::query(&format!("DELETE FROM ui_sessions WHERE {column} = $1 AND kind = 'session'"))
        .bind(value)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query(&format!("DELETE FROM ui_sessions WHERE {column} = $1")).bind(value).execute(&mut *conn).await?;
    Ok(sessions)
}
