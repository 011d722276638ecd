//! Users, roles, API tokens, web sign-in links and the audit log of one organisation.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{hash_secret, new_id, new_secret, now, rfc3339};

/// Names of organisations, users, windows...: short, printable, no surprises in
/// URLs, CSV or HTML.
pub fn check_name(what: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} name {name:?} must be 1-64 characters of letters, digits, '-', '_', '.', '@'"
        )))
    }
}

/// Tables whose rows have a name unique within an organisation.
#[derive(Debug, Clone, Copy)]
pub enum Named {
    User,
    Baseline,
    MaintenanceWindow,
    SavedQuery,
}

impl Named {
    fn table_and_noun(self) -> (&'static str, &'static str) {
        match self {
            Named::User => ("users", "user"),
            Named::Baseline => ("baselines", "baseline"),
            Named::MaintenanceWindow => ("maintenance_windows", "maintenance window"),
            Named::SavedQuery => ("saved_queries", "saved query"),
        }
    }
}

/// Refuses with 409 when the organisation already has a `kind` named `name`.
/// Two requests racing past this both try to insert; the unique index stops
/// the second, which `ApiError` also answers with 409.
pub async fn ensure_name_free(conn: &mut sqlx::AnyConnection, kind: Named, org_id: &str, name: &str) -> ApiResult<()> {
    let (table, noun) = kind.table_and_noun();
    // `table` is one of the constants above, never caller input.
    let taken = sqlx::query(&format!("SELECT id FROM {table} WHERE org_id = $1 AND name = $2"))
        .bind(org_id)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    match taken {
        Some(_) => Err(ApiError::Conflict(format!("{noun} {name:?} already exists"))),
        None => Ok(()),
    }
}

pub async fn whoami(user: User) -> Json<Value> {
    Json(json!({ "user": user.name, "user_id": user.user_id, "org_id": user.org_id, "role": user.role }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    role: String,
}

pub async fn create_user(
    State(st): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<NewUser>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Admin)?;
    check_name("user", &body.name)?;
    let role = Role::parse(&body.role)?;
    let mut tx = st.db.begin().await?;
    ensure_name_free(&mut tx, Named::User, &user.org_id, &body.name).await?;
    let id = new_id()?;
    sqlx::query("INSERT INTO users (id, org_id, name, role, created) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(&user.org_id)
        .bind(&body.name)
        .bind(role.as_str())
        .bind(now())
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "user.create", &body.name, json!({ "role": role })).await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "name": body.name, "role": role })))
}

pub async fn list_users(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let rows = sqlx::query("SELECT id, name, role, created FROM users WHERE org_id = $1 ORDER BY name")
        .bind(&user.org_id)
        .fetch_all(&st.db.pool)
        .await?;
    let mut users = Vec::new();
    for r in rows {
        users.push(json!({
            "id": r.try_get::<String, _>(0)?, "name": r.try_get::<String, _>(1)?,
            "role": r.try_get::<String, _>(2)?, "created": rfc3339(r.try_get(3)?),
        }));
    }
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    label: String,
    /// Admins may issue a token for another user of their organisation.
    user: Option<String>,
}

pub async fn create_token(
    State(st): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<NewToken>,
) -> ApiResult<Json<Value>> {
    if body.label.is_empty() || body.label.len() > 100 {
        return Err(ApiError::BadRequest("label must be 1-100 characters".into()));
    }
    let mut tx = st.db.begin().await?;
    let owner_id = match &body.user {
        None => user.user_id.clone(),
        Some(name) => {
            user.require(Role::Admin)?;
            let row = sqlx::query("SELECT id FROM users WHERE org_id = $1 AND name = $2")
                .bind(&user.org_id)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no user {name:?} in this organisation")))?;
            row.try_get::<String, _>(0)?
        }
    };
    let id = new_id()?;
    let token = new_secret("hpu_")?;
    sqlx::query("INSERT INTO api_tokens (id, user_id, token_hash, label, created) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(&owner_id)
        .bind(hash_secret(&token))
        .bind(&body.label)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        &user.org_id,
        &user.actor(),
        "token.create",
        &id,
        json!({ "label": body.label, "user_id": owner_id }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "token": token, "note": "shown once; stored only as a hash" })))
}

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
    audit::record(&mut tx, &user.org_id, &user.actor(), "token.revoke", &id, json!({})).await?;
    tx.commit().await?;
    Ok(Json(json!({ "revoked": id })))
}

/// A one-time link that signs a browser in (the web UI has no JavaScript, so
/// this is how an API user opens it). Valid for five minutes.
pub async fn create_login_link(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let code = new_secret("hpl_")?;
    let mut tx = st.db.begin().await?;
    sqlx::query("INSERT INTO ui_sessions (session_hash, user_id, kind, expires) VALUES ($1, $2, 'link', $3)")
        .bind(hash_secret(&code))
        .bind(&user.user_id)
        .bind(now() + 300)
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "ui.login-link", &user.name, json!({})).await?;
    tx.commit().await?;
    Ok(Json(json!({ "path": format!("/ui/login/{code}"), "expires_in_seconds": 300 })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<i64>,
}

pub async fn list_audit(State(st): State<AppState>, user: User, Query(q): Query<AuditQuery>) -> ApiResult<Json<Value>> {
    let entries = audit_entries(&st, &user.org_id, q.limit.unwrap_or(200).clamp(1, 5000)).await?;
    Ok(Json(json!({ "entries": entries })))
}

pub async fn audit_entries(st: &AppState, org_id: &str, limit: i64) -> ApiResult<Vec<Value>> {
    let rows = sqlx::query(
        "SELECT at, actor, action, subject, detail FROM audit_log WHERE org_id = $1 ORDER BY at DESC, id LIMIT $2",
    )
    .bind(org_id)
    .bind(limit)
    .fetch_all(&st.db.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let detail: String = r.try_get(4)?;
        out.push(json!({
            "at": rfc3339(r.try_get(0)?), "actor": r.try_get::<String, _>(1)?,
            "action": r.try_get::<String, _>(2)?, "subject": r.try_get::<String, _>(3)?,
            "detail": serde_json::from_str::<Value>(&detail)?,
        }));
    }
    Ok(out)
}
