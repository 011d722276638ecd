//! Users and roles and the audit log of one organisation (API tokens, web
//! sessions and sign-in links: `tokens`).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
// Re-exported: the name rules were reached here before they moved to the domain.
pub use crate::domain::names::{Named, check_name, ensure_name_free};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{new_id, now, rfc3339};

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
    let rows = sqlx::query("SELECT id, name, role, created, removed_at FROM users WHERE org_id = $1 ORDER BY name")
        .bind(&user.org_id)
        .fetch_all(&st.db.pool)
        .await?;
    let mut users = Vec::new();
    for r in rows {
        users.push(json!({
            "id": r.try_get::<String, _>(0)?, "name": r.try_get::<String, _>(1)?,
            "role": r.try_get::<String, _>(2)?, "created": rfc3339(r.try_get(3)?),
            "removed": r.try_get::<Option<i64>, _>(4)?.map(rfc3339),
        }));
    }
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    role: String,
}

/// The id and role of user `name`, refusing when the change would leave the
/// organisation without an admin (nobody could then manage users or tokens).
async fn user_for_change(
    tx: &mut sqlx::AnyConnection,
    org_id: &str,
    name: &str,
    new_role: Option<Role>,
) -> ApiResult<(String, Role)> {
    let id = crate::domain::credentials::active_user_id(&mut *tx, org_id, name).await?;
    let row = sqlx::query("SELECT role FROM users WHERE id = $1").bind(&id).fetch_one(&mut *tx).await?;
    let role = Role::parse(&row.try_get::<String, _>(0)?)?;
    if role == Role::Admin && new_role != Some(Role::Admin) {
        let others = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM users WHERE org_id = $1 AND role = 'admin' AND removed_at IS NULL AND id <> $2",
        )
        .bind(org_id)
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>(0)?;
        if others == 0 {
            return Err(ApiError::Conflict(format!("{name:?} is the organisation's last admin")));
        }
    }
    Ok((id, role))
}

/// Changes a user's role (demotes or promotes); effective at the user's next request.
pub async fn set_user_role(
    State(st): State<AppState>,
    user: User,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RoleChange>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Admin)?;
    let role = Role::parse(&body.role)?;
    let mut tx = st.db.begin().await?;
    let (id, from) = user_for_change(&mut tx, &user.org_id, &name, Some(role)).await?;
    sqlx::query("UPDATE users SET role = $1 WHERE id = $2").bind(role.as_str()).bind(&id).execute(&mut *tx).await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "user.role", &name, json!({ "from": from, "to": role }))
        .await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "name": name, "role": role })))
}

/// Removes a user: their tokens are revoked and their web sessions ended at once.
/// The row stays (as removed) so the audit log and old names still resolve.
pub async fn remove_user(State(st): State<AppState>, user: User, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    user.require(Role::Admin)?;
    let t = now();
    let mut tx = st.db.begin().await?;
    let (id, _) = user_for_change(&mut tx, &user.org_id, &name, None).await?;
    sqlx::query("UPDATE users SET removed_at = $1 WHERE id = $2").bind(t).bind(&id).execute(&mut *tx).await?;
    let tokens = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
        .bind(t)
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let sessions =
        crate::domain::credentials::end_sessions(&mut tx, crate::domain::credentials::SessionsOf::User(&id)).await?;
    let detail = json!({ "tokens_revoked": tokens, "sessions_ended": sessions });
    audit::record(&mut tx, &user.org_id, &user.actor(), "user.remove", &name, detail.clone()).await?;
    tx.commit().await?;
    Ok(Json(json!({ "removed": name, "tokens_revoked": tokens, "sessions_ended": sessions })))
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
