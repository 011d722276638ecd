//! API tokens, web sessions and one-time sign-in links: issued, listed, revoked.
//! A credential never outlives the one that made it: a token or sign-in link
//! made by an expiring token or by a web session ends no later than it, and a
//! session ends with the token it came from.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Credential, Role, User};
use crate::domain::credentials::{SessionsOf, active_user_id, end_sessions};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{hash_secret, new_id, new_secret, now, rfc3339};

/// The longest a token may be asked to live (`expires_in_seconds`).
pub const MAX_TOKEN_SECONDS: i64 = 400 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    label: String,
    /// Admins may issue a token for another user of their organisation.
    user: Option<String>,
    /// Lifetime; none means until revoked (unless the caller's credential expires).
    expires_in_seconds: Option<i64>,
}

/// When a token asked for at `t` with `expires_in` ends, given the caller's
/// credential: never later than that credential (so a web session, which lives
/// 12 hours, cannot mint a lasting token).
pub fn token_expiry(credential: &Credential, expires_in: Option<i64>, t: i64) -> ApiResult<Option<i64>> {
    if let Some(s) = expires_in
        && !(1..=MAX_TOKEN_SECONDS).contains(&s)
    {
        return Err(ApiError::BadRequest(format!("expires_in_seconds must be 1-{MAX_TOKEN_SECONDS}")));
    }
    let asked = expires_in.map(|s| t + s);
    match (asked, credential.expires()) {
        (None, limit) => Ok(limit),
        (Some(a), Some(limit)) if a > limit => Err(ApiError::BadRequest(format!(
            "a token cannot outlive the credential that makes it, which ends at {}",
            rfc3339(limit)
        ))),
        (Some(a), _) => Ok(Some(a)),
    }
}

pub async fn create_token(
    State(st): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<NewToken>,
) -> ApiResult<Json<Value>> {
    if body.label.is_empty() || body.label.len() > 100 {
        return Err(ApiError::BadRequest("label must be 1-100 characters".into()));
    }
    let t = now();
    let expires = token_expiry(&user.credential, body.expires_in_seconds, t)?;
    let mut tx = st.db.begin().await?;
    let owner_id = match &body.user {
        None => user.user_id.clone(),
        Some(name) => {
            user.require(Role::Admin)?;
            active_user_id(&mut tx, &user.org_id, name).await?
        }
    };
    let id = new_id()?;
    let token = new_secret("hpu_")?;
    sqlx::query(
        "INSERT INTO api_tokens (id, user_id, token_hash, label, created, expires) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&owner_id)
    .bind(hash_secret(&token))
    .bind(&body.label)
    .bind(t)
    .bind(expires)
    .execute(&mut *tx)
    .await?;
    let detail = json!({ "label": body.label, "user_id": owner_id, "expires": expires.map(rfc3339) });
    audit::record(&mut tx, &user.org_id, &user.actor(), "token.create", &id, detail).await?;
    tx.commit().await?;
    Ok(Json(json!({
        "id": id, "token": token, "expires": expires.map(rfc3339), "note": "shown once; stored only as a hash"
    })))
}

/// Revokes a token and ends every web session made from it (and its unused
/// sign-in links), in one transaction.
pub async fn revoke_token(State(st): State<AppState>, user: User, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let mut tx = st.db.begin().await?;
    let row = sqlx::query(
        "SELECT t.user_id FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1 AND u.org_id = $2 AND t.revoked_at IS NULL",
    )
    .bind(&id)
    .bind(&user.org_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no active token {id:?} in this organisation")))?;
    let owner: String = row.try_get(0)?;
    if owner != user.user_id {
        user.require(Role::Admin)?;
    }
    sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2").bind(now()).bind(&id).execute(&mut *tx).await?;
    let ended = end_sessions(&mut tx, SessionsOf::Token(&id)).await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "token.revoke", &id, json!({ "sessions_ended": ended }))
        .await?;
    tx.commit().await?;
    Ok(Json(json!({ "revoked": id, "sessions_ended": ended })))
}

/// Tokens of the organisation (admins) or the caller's own, revoked ones too;
/// never the secret, which is not stored.
pub async fn list_tokens(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let rows = sqlx::query(
        "SELECT t.id, u.name, t.label, t.created, t.expires, t.revoked_at FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE u.org_id = $1 AND ($2 = 1 OR u.id = $3) ORDER BY t.created DESC, t.id",
    )
    .bind(&user.org_id)
    .bind(i64::from(user.role == Role::Admin))
    .bind(&user.user_id)
    .fetch_all(&st.db.pool)
    .await?;
    let t = now();
    let mut tokens = Vec::new();
    for r in rows {
        let (expires, revoked): (Option<i64>, Option<i64>) = (r.try_get(4)?, r.try_get(5)?);
        tokens.push(json!({
            "id": r.try_get::<String, _>(0)?, "user": r.try_get::<String, _>(1)?, "label": r.try_get::<String, _>(2)?,
            "created": rfc3339(r.try_get(3)?), "expires": expires.map(rfc3339), "revoked": revoked.map(rfc3339),
            "active": revoked.is_none() && expires.is_none_or(|e| e > t),
        }));
    }
    Ok(Json(json!({ "tokens": tokens })))
}

/// Live web sessions of the organisation (admins) or the caller's own.
pub async fn list_sessions(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let rows = sqlx::query(
        "SELECT s.id, u.name, s.token_id, s.created, s.expires FROM ui_sessions s JOIN users u ON u.id = s.user_id \
         WHERE u.org_id = $1 AND ($2 = 1 OR u.id = $3) AND s.kind = 'session' AND s.expires > $4 \
         ORDER BY s.created DESC, s.id",
    )
    .bind(&user.org_id)
    .bind(i64::from(user.role == Role::Admin))
    .bind(&user.user_id)
    .bind(now())
    .fetch_all(&st.db.pool)
    .await?;
    let mut sessions = Vec::new();
    for r in rows {
        sessions.push(json!({
            "id": r.try_get::<String, _>(0)?, "user": r.try_get::<String, _>(1)?, "token_id": r.try_get::<String, _>(2)?,
            "created": rfc3339(r.try_get(3)?), "expires": rfc3339(r.try_get(4)?),
        }));
    }
    Ok(Json(json!({ "sessions": sessions })))
}

/// Ends one web session: the caller's own, or (admins) anyone's in the organisation.
pub async fn revoke_session(State(st): State<AppState>, user: User, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let mut tx = st.db.begin().await?;
    let row = sqlx::query(
        "SELECT s.user_id FROM ui_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1 AND s.kind = 'session' AND u.org_id = $2",
    )
    .bind(&id)
    .bind(&user.org_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no session {id:?} in this organisation")))?;
    if row.try_get::<String, _>(0)? != user.user_id {
        user.require(Role::Admin)?;
    }
    sqlx::query("DELETE FROM ui_sessions WHERE id = $1").bind(&id).execute(&mut *tx).await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "session.revoke", &id, json!({})).await?;
    tx.commit().await?;
    Ok(Json(json!({ "revoked": id })))
}

/// A one-time link that signs a browser in (the web UI has no JavaScript, so
/// this is how an API user opens it). Valid for five minutes; the session it
/// starts ends with the token that made the link.
pub async fn create_login_link(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let code = new_secret("hpl_")?;
    let t = now();
    let mut tx = st.db.begin().await?;
    sqlx::query(
        "INSERT INTO ui_sessions (session_hash, user_id, kind, expires, id, token_id, created) VALUES ($1, $2, 'link', $3, $4, $5, $6)",
    )
    .bind(hash_secret(&code))
    .bind(&user.user_id)
    .bind(t + 300)
    .bind(new_id()?)
    .bind(user.credential.token_id())
    .bind(t)
    .execute(&mut *tx)
    .await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "ui.login-link", &user.name, json!({})).await?;
    tx.commit().await?;
    Ok(Json(json!({ "path": format!("/ui/login/{code}"), "expires_in_seconds": 300 })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_mints_only_tokens_that_end_with_it() {
        let t = 1_000_000;
        let session = Credential::Session { id: "s".into(), token_id: "t".into(), expires: t + 3600 };
        assert_eq!(token_expiry(&session, None, t).ok(), Some(Some(t + 3600)));
        assert_eq!(token_expiry(&session, Some(60), t).ok(), Some(Some(t + 60)));
        assert!(token_expiry(&session, Some(7200), t).is_err());
        let lasting = Credential::Token { id: "t".into(), expires: None };
        assert_eq!(token_expiry(&lasting, None, t).ok(), Some(None));
        assert_eq!(token_expiry(&lasting, Some(MAX_TOKEN_SECONDS), t).ok(), Some(Some(t + MAX_TOKEN_SECONDS)));
        for bad in [0, -1, MAX_TOKEN_SECONDS + 1] {
            assert!(token_expiry(&lasting, Some(bad), t).is_err(), "{bad}");
        }
    }
}
