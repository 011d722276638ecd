//! Enrollment (a one-time token and the machine's public key make a machine) and the
//! machine inventory: list, detail, tags, revocation.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
use crate::domain::names::check_tags;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{hash_secret, new_id, new_secret, now, rfc3339};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentToken {
    #[serde(default)]
    tags: Vec<String>,
    /// Defaults to one day.
    expires_in_seconds: Option<i64>,
    /// The tier the enrolled machine joins (None: the organisation's last tier).
    #[serde(default)]
    tier: Option<String>,
}

pub async fn create_enrollment_token(
    State(st): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<NewEnrollmentToken>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    check_tags(&body.tags)?;
    let ttl = body.expires_in_seconds.unwrap_or(86_400);
    if !(60..=30 * 86_400).contains(&ttl) {
        return Err(ApiError::BadRequest("expires_in_seconds must be between 60 and 2592000".into()));
    }
    crate::tiers::check_tier_named(&st, &user.org_id, body.tier.as_deref()).await?;
    let id = new_id()?;
    let token = new_secret("hpe_")?;
    let mut tx = st.db.begin().await?;
    sqlx::query(
        "INSERT INTO enrollment_tokens (id, org_id, token_hash, tags, created, expires, tier) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&user.org_id)
    .bind(hash_secret(&token))
    .bind(serde_json::to_string(&body.tags)?)
    .bind(now())
    .bind(now() + ttl)
    .bind(&body.tier)
    .execute(&mut *tx)
    .await?;
    let what = json!({ "tags": body.tags, "tier": body.tier });
    audit::record(&mut tx, &user.org_id, &user.actor(), "enrollment-token.create", &id, what).await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "token": token, "expires": rfc3339(now() + ttl) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    token: String,
    hostname: String,
    /// The machine's ed25519 public key (64 hex digits); it signs every later request.
    public_key: String,
}

/// Registers a machine's public key in exchange for a one-time enrollment token. The token is
/// consumed by a conditional UPDATE, so two agents racing with one token cannot
/// both win, on any number of replicas.
pub async fn enroll(State(st): State<AppState>, ApiJson(body): ApiJson<Enroll>) -> ApiResult<Json<Value>> {
    if body.hostname.is_empty() || body.hostname.len() > 255 {
        return Err(ApiError::BadRequest("hostname must be 1-255 characters".into()));
    }
    let public = hotpatch_wire::MachinePublicKey::from_hex(&body.public_key)
        .map_err(|e| ApiError::BadRequest(format!("public_key: {e}")))?;
    let key_hash = hash_secret(&public.to_hex());
    let mut tx = st.db.begin().await?;
    let row = sqlx::query(
        "SELECT id, org_id, tags, expires, used_at, revoked_at, tier FROM enrollment_tokens WHERE token_hash = $1",
    )
    .bind(hash_secret(&body.token))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::Unauthorized("enrollment token unknown".into()))?;
    let token_id: String = row.try_get(0)?;
    let org_id: String = row.try_get(1)?;
    let tags: String = row.try_get(2)?;
    let tier: Option<String> = row.try_get(6)?;
    if row.try_get::<Option<i64>, _>(4)?.is_some() {
        return Err(ApiError::Unauthorized("enrollment token already used".into()));
    }
    if row.try_get::<Option<i64>, _>(5)?.is_some() {
        return Err(ApiError::Unauthorized("enrollment token revoked".into()));
    }
    if row.try_get::<i64, _>(3)? <= now() {
        return Err(ApiError::Unauthorized("enrollment token expired".into()));
    }
    let machine_id = new_id()?;
    if let Some(other) = sqlx::query("SELECT id FROM machines WHERE credential_hash = $1")
        .bind(&key_hash)
        .fetch_optional(&mut *tx)
        .await?
    {
        let other: String = other.try_get(0)?;
        return Err(ApiError::Conflict(format!(
            "this machine key is already enrolled as machine {other}; make a new key to enroll again"
        )));
    }
    let consumed =
        sqlx::query("UPDATE enrollment_tokens SET used_at = $1, machine_id = $2 WHERE id = $3 AND used_at IS NULL")
            .bind(now())
            .bind(&machine_id)
            .bind(&token_id)
            .execute(&mut *tx)
            .await?;
    if consumed.rows_affected() != 1 {
        return Err(ApiError::Unauthorized("enrollment token already used".into()));
    }
    sqlx::query(
        "INSERT INTO machines (id, org_id, credential_hash, public_key, hostname, tags, enrolled, tier) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&machine_id)
    .bind(&org_id)
    .bind(&key_hash)
    .bind(public.to_hex())
    .bind(&body.hostname)
    .bind(&tags)
    .bind(now())
    .bind(&tier)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &org_id,
        &format!("machine:{machine_id}"),
        "machine.enroll",
        &body.hostname,
        json!({ "token_id": token_id, "tier": tier }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({ "machine_id": machine_id, "org_id": org_id })))
}

pub async fn list_machines(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let rows = sqlx::query(
        "SELECT id, hostname, os, kernel, arch, cores, tags, enrolled, last_seen, revoked_at FROM machines WHERE org_id = $1 ORDER BY hostname, id",
    )
    .bind(&user.org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut machines = Vec::new();
    for r in rows {
        machines.push(machine_json(&r)?);
    }
    Ok(Json(json!({ "machines": machines })))
}

fn machine_json(r: &sqlx::any::AnyRow) -> ApiResult<Value> {
    Ok(json!({
        "id": r.try_get::<String, _>(0)?, "hostname": r.try_get::<String, _>(1)?,
        "os": r.try_get::<String, _>(2)?, "kernel": r.try_get::<String, _>(3)?,
        "arch": r.try_get::<String, _>(4)?, "cores": r.try_get::<i64, _>(5)?,
        "tags": serde_json::from_str::<Value>(&r.try_get::<String, _>(6)?)?,
        "enrolled": rfc3339(r.try_get(7)?),
        "last_seen": r.try_get::<Option<i64>, _>(8)?.map(rfc3339),
        "revoked": r.try_get::<Option<i64>, _>(9)?.is_some(),
    }))
}

pub async fn machine_detail(State(st): State<AppState>, user: User, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(machine_detail_json(&st, &user.org_id, &id).await?))
}

pub async fn machine_detail_json(st: &AppState, org_id: &str, id: &str) -> ApiResult<Value> {
    let r = sqlx::query(
        "SELECT id, hostname, os, kernel, arch, cores, tags, enrolled, last_seen, revoked_at, readiness FROM machines WHERE org_id = $1 AND id = $2",
    )
    .bind(org_id)
    .bind(id)
    .fetch_optional(&st.db.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no machine {id:?} in this organisation")))?;
    let mut machine = machine_json(&r)?;
    machine["readiness"] = serde_json::from_str(&r.try_get::<String, _>(10)?)?;
    // The tier it was put in (null: it follows the organisation's last tier).
    machine["tier"] = json!(crate::tiers::machine_tier(st, id).await?);
    machine["catalogs_stale"] = json!(crate::domain::signed_documents::machine_stale(st, org_id, id).await?);
    let targets = sqlx::query(
        "SELECT build_id, file_name, processes, applied_patch_id, applied_level, error FROM machine_targets WHERE machine_id = $1 ORDER BY file_name",
    )
    .bind(id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut list = Vec::new();
    for t in targets {
        list.push(json!({
            "build_id": t.try_get::<String, _>(0)?, "file_name": t.try_get::<String, _>(1)?,
            "processes": t.try_get::<i64, _>(2)?, "applied_patch_id": t.try_get::<Option<String>, _>(3)?,
            "applied_level": t.try_get::<i64, _>(4)?, "error": t.try_get::<Option<String>, _>(5)?,
        }));
    }
    machine["targets"] = Value::Array(list);
    let history = sqlx::query(
        "SELECT deployment_id, status, detail, at FROM work_history WHERE machine_id = $1 ORDER BY at DESC LIMIT 100",
    )
    .bind(id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut list = Vec::new();
    for h in history {
        list.push(json!({
            "deployment_id": h.try_get::<String, _>(0)?, "status": h.try_get::<String, _>(1)?,
            "detail": h.try_get::<String, _>(2)?, "at": rfc3339(h.try_get(3)?),
        }));
    }
    machine["history"] = Value::Array(list);
    Ok(machine)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tags {
    tags: Vec<String>,
}

pub async fn set_tags(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Tags>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    check_tags(&body.tags)?;
    let mut tx = st.db.begin().await?;
    let done = sqlx::query("UPDATE machines SET tags = $1 WHERE org_id = $2 AND id = $3")
        .bind(serde_json::to_string(&body.tags)?)
        .bind(&user.org_id)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() != 1 {
        return Err(ApiError::NotFound(format!("no machine {id:?} in this organisation")));
    }
    audit::record(&mut tx, &user.org_id, &user.actor(), "machine.tags", &id, json!({ "tags": body.tags })).await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "tags": body.tags })))
}

pub async fn revoke_machine(State(st): State<AppState>, user: User, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    let mut tx = st.db.begin().await?;
    let done = sqlx::query("UPDATE machines SET revoked_at = $1 WHERE org_id = $2 AND id = $3 AND revoked_at IS NULL")
        .bind(now())
        .bind(&user.org_id)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() != 1 {
        return Err(ApiError::NotFound(format!("no enrolled, unrevoked machine {id:?} in this organisation")));
    }
    audit::record(&mut tx, &user.org_id, &user.actor(), "machine.revoke", &id, json!({})).await?;
    tx.commit().await?;
    Ok(Json(json!({ "revoked": id })))
}
