//! The catalog of one organisation: signed hotpatches (verified against the
//! publisher keys the server trusts before anything is stored), baselines, the
//! release calendar, and artifacts served by content hash.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{OrgCaller, Role, User};
use crate::domain::catalog::{baselines, check_build_id, check_sha256, hotpatches};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{new_id, now, parse_time, rfc3339, sha256_hex};

pub async fn upload_hotpatch(
    State(st): State<AppState>,
    user: User,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    let body = body.map_err(super::json::bytes_rejection)?;
    // The server's keys and the organisation's, as they are now (no restart needed).
    let trust = crate::trust::store_for(&st, &user.org_id).await?;
    let verified = hotpatch_format::verify(&body, &trust)
        .map_err(|e| ApiError::Unprocessable(format!("package rejected: {e}")))?;
    let m = &verified.manifest;
    if !m.hotpatchable() {
        return Err(ApiError::Unprocessable(format!(
            "package rejected: fix classified {}; only security and critical fixes may ship as hotpatches, this one needs a baseline",
            m.classification
        )));
    }
    let sha = sha256_hex(&body);
    let mut tx = st.db.begin().await?;
    let existing = sqlx::query("SELECT artifact_sha256 FROM hotpatches WHERE org_id = $1 AND patch_id = $2")
        .bind(&user.org_id)
        .bind(&m.patch_id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = existing {
        let stored: String = row.try_get(0)?;
        if stored == sha {
            return Ok(Json(json!({ "patch_id": m.patch_id, "artifact_sha256": sha, "created": false })));
        }
        return Err(ApiError::Conflict(format!(
            "hotpatch {:?} already exists with different content (artifact {stored})",
            m.patch_id
        )));
    }
    let clash = sqlx::query("SELECT patch_id FROM hotpatches WHERE org_id = $1 AND build_id = $2 AND level = $3")
        .bind(&user.org_id)
        .bind(&m.target.build_id)
        .bind(i64::from(m.level))
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = clash {
        return Err(ApiError::Conflict(format!(
            "level {} for build-id {} is already taken by hotpatch {:?}",
            m.level,
            m.target.build_id,
            row.try_get::<String, _>(0)?
        )));
    }
    let have_artifact =
        sqlx::query("SELECT sha256 FROM artifacts WHERE sha256 = $1").bind(&sha).fetch_optional(&mut *tx).await?;
    if have_artifact.is_none() {
        sqlx::query("INSERT INTO artifacts (sha256, bytes, size, created) VALUES ($1, $2, $3, $4)")
            .bind(&sha)
            .bind(body.to_vec())
            .bind(body.len() as i64)
            .bind(now())
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO hotpatches (org_id, patch_id, artifact_sha256, product, build_id, file_name, arch, level, classification, \
         cves, description, created, key_id, uploaded) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&user.org_id)
    .bind(&m.patch_id)
    .bind(&sha)
    .bind(&m.product)
    .bind(&m.target.build_id)
    .bind(&m.target.file_name)
    .bind(m.target.machine.as_str())
    .bind(i64::from(m.level))
    .bind(m.classification.as_str())
    .bind(serde_json::to_string(&m.cves)?)
    .bind(&m.description)
    .bind(&m.created)
    .bind(&verified.key_id)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &user.org_id,
        &user.actor(),
        "hotpatch.upload",
        &m.patch_id,
        json!({ "artifact_sha256": sha, "build_id": m.target.build_id, "level": m.level, "key_id": verified.key_id }),
    )
    .await?;
    tx.commit().await?;
    crate::domain::work_flags::org_changed(&st, &user.org_id).await?;
    Ok(Json(json!({ "patch_id": m.patch_id, "artifact_sha256": sha, "created": true })))
}

pub async fn list_hotpatches(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "hotpatches": hotpatches(&st, &user.org_id).await? })))
}

/// Artifacts are addressed by content, but served only to callers whose
/// organisation's catalog holds them.
pub async fn artifact(State(st): State<AppState>, caller: OrgCaller, Path(sha): Path<String>) -> ApiResult<Response> {
    check_sha256(&sha)?;
    let row = sqlx::query(
        "SELECT a.bytes FROM artifacts a WHERE a.sha256 = $1 AND EXISTS \
         (SELECT 1 FROM hotpatches h WHERE h.org_id = $2 AND h.artifact_sha256 = a.sha256)",
    )
    .bind(&sha)
    .bind(&caller.org_id)
    .fetch_optional(&st.db.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no artifact {sha} in this organisation's catalog")))?;
    let bytes: Vec<u8> = row.try_get(0)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::ETAG, format!("\"{sha}\"")),
            (header::CACHE_CONTROL, "private, max-age=31536000, immutable".to_string()),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineTarget {
    file_name: String,
    build_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBaseline {
    /// e.g. "2027.04".
    name: String,
    product: String,
    /// RFC 3339.
    released: String,
    /// false for an unplanned baseline (a fix that cannot be hotpatched).
    #[serde(default = "yes")]
    planned: bool,
    #[serde(default)]
    reason: String,
    targets: Vec<BaselineTarget>,
}

fn yes() -> bool {
    true
}

pub async fn create_baseline(
    State(st): State<AppState>,
    user: User,
    ApiJson(b): ApiJson<NewBaseline>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    crate::domain::names::check_name("baseline", &b.name)?;
    if b.product.is_empty() || b.product.len() > 128 || b.reason.len() > 1000 {
        return Err(ApiError::BadRequest("product must be 1-128 characters and reason at most 1000".into()));
    }
    let released = parse_time(&b.released)
        .ok_or_else(|| ApiError::BadRequest(format!("released {:?} is not an RFC 3339 time", b.released)))?;
    if b.targets.is_empty() || b.targets.len() > 10_000 {
        return Err(ApiError::BadRequest("a baseline lists 1 to 10000 targets".into()));
    }
    for t in &b.targets {
        check_build_id(&t.build_id)?;
        if t.file_name.is_empty() || t.file_name.len() > 255 || t.file_name.contains('/') {
            return Err(ApiError::BadRequest(format!(
                "file_name {:?} must be a file name of 1-255 bytes",
                t.file_name
            )));
        }
    }
    let mut tx = st.db.begin().await?;
    crate::domain::names::ensure_name_free(&mut tx, crate::domain::names::Named::Baseline, &user.org_id, &b.name)
        .await?;
    let id = new_id()?;
    sqlx::query(
        "INSERT INTO baselines (id, org_id, name, product, released, planned, reason, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(&user.org_id)
    .bind(&b.name)
    .bind(&b.product)
    .bind(released)
    .bind(i64::from(b.planned))
    .bind(&b.reason)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    let mut seen = std::collections::BTreeSet::new();
    for t in &b.targets {
        if !seen.insert(t.build_id.as_str()) {
            return Err(ApiError::BadRequest(format!("build_id {} is listed twice", t.build_id)));
        }
        sqlx::query("INSERT INTO baseline_targets (baseline_id, build_id, file_name) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(&t.build_id)
            .bind(&t.file_name)
            .execute(&mut *tx)
            .await?;
    }
    audit::record(
        &mut tx,
        &user.org_id,
        &user.actor(),
        "baseline.create",
        &b.name,
        json!({ "planned": b.planned, "targets": b.targets.len() }),
    )
    .await?;
    tx.commit().await?;
    crate::domain::work_flags::org_changed(&st, &user.org_id).await?;
    Ok(Json(json!({ "id": id, "name": b.name })))
}

pub async fn list_baselines(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let list = baselines(&st, &user.org_id).await?;
    let now = now();
    let calendar = crate::domain::calendar::org_calendar(&st, &user.org_id).await?;
    let json: Vec<Value> = list
        .iter()
        .map(|b| {
            let covered = crate::domain::coverage::covered_until(b, &list, now, &calendar);
            json!({
                "id": b.id, "name": b.name, "product": b.product, "released": rfc3339(b.released),
                "planned": b.planned, "reason": b.reason,
                "targets": b.targets.iter().map(|(f, id)| json!({ "file_name": f, "build_id": id })).collect::<Vec<_>>(),
                "covered_until": covered.as_ref().map(|c| c.date.clone()),
                "coverage": covered.map(|c| c.advice),
            })
        })
        .collect();
    Ok(Json(json!({ "baselines": json })))
}
