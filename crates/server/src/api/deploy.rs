//! Maintenance windows and deployments: what to roll out (a hotpatch, a baseline,
//! a rollback), to which machines (tags, or a saved query), when (start time, window), in which
//! rings (canary share, soak time, failure threshold), with which reboot policy.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
use crate::domain::rollout::{Deployment, Kind, RingProgress, deployments, progress, window_from_columns};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{new_id, now, parse_time, rfc3339};
use crate::windows::{day_name, parse_day, parse_start};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWindow {
    name: String,
    days: Vec<String>,
    /// Local start time "HH:MM".
    start: String,
    duration_minutes: i64,
    time_zone: String,
}

pub async fn create_window(
    State(st): State<AppState>,
    user: User,
    ApiJson(w): ApiJson<NewWindow>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    crate::domain::names::check_name("window", &w.name)?;
    let mut days = Vec::new();
    for d in &w.days {
        let day = parse_day(d).ok_or_else(|| ApiError::BadRequest(format!("unknown weekday {d:?} (use mon..sun)")))?;
        if !days.contains(&day) {
            days.push(day);
        }
    }
    if days.is_empty() {
        return Err(ApiError::BadRequest("days must name at least one weekday".into()));
    }
    let start =
        parse_start(&w.start).ok_or_else(|| ApiError::BadRequest(format!("start {:?} must be HH:MM", w.start)))?;
    if !(1..=7 * 24 * 60).contains(&w.duration_minutes) {
        return Err(ApiError::BadRequest("duration_minutes must be between 1 and 10080".into()));
    }
    jiff::tz::TimeZone::get(&w.time_zone)
        .map_err(|e| ApiError::BadRequest(format!("time_zone {:?} unknown: {e}", w.time_zone)))?;
    let day_names: Vec<&str> = days.iter().map(|d| day_name(*d)).collect();
    let mut tx = st.db.begin().await?;
    crate::domain::names::ensure_name_free(
        &mut tx,
        crate::domain::names::Named::MaintenanceWindow,
        &user.org_id,
        &w.name,
    )
    .await?;
    let id = new_id()?;
    sqlx::query(
        "INSERT INTO maintenance_windows (id, org_id, name, days, start_minute, duration_minutes, time_zone, created) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(&user.org_id)
    .bind(&w.name)
    .bind(day_names.join(","))
    .bind(start)
    .bind(w.duration_minutes)
    .bind(&w.time_zone)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "window.create", &w.name, json!({ "days": day_names, "start": w.start, "duration_minutes": w.duration_minutes, "time_zone": w.time_zone })).await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "name": w.name })))
}

pub async fn list_windows(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let rows = sqlx::query(
        "SELECT id, name, days, start_minute, duration_minutes, time_zone FROM maintenance_windows WHERE org_id = $1 ORDER BY name",
    )
    .bind(&user.org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let start: i64 = r.try_get(3)?;
        let w = window_from_columns(&r.try_get::<String, _>(2)?, start, r.try_get(4)?, r.try_get(5)?);
        let next = w.current_or_next(now());
        out.push(json!({
            "id": r.try_get::<String, _>(0)?, "name": r.try_get::<String, _>(1)?,
            "days": w.days.iter().map(|d| day_name(*d)).collect::<Vec<_>>(),
            "start": format!("{:02}:{:02}", start / 60, start % 60),
            "duration_minutes": w.duration_minutes, "time_zone": w.time_zone,
            "open_now": w.is_open(now()),
            "next": next.map(|(s, e)| json!({ "start": rfc3339(s), "end": rfc3339(e) })),
        }));
    }
    Ok(Json(json!({ "windows": out })))
}

/// Which machines a deployment reaches: those carrying all `tags`, or those the
/// saved query named `query` matches; neither means every machine.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    tags: Option<Vec<String>>,
    query: Option<String>,
}

/// What the operator asked of the rings; what is left out the server
/// chooses from the size of the scope ([`crate::domain::rollout::default_rings`]).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rings {
    canary_percent: Option<i64>,
    soak_seconds: Option<i64>,
    #[serde(default = "default_threshold")]
    failure_threshold_percent: i64,
}

fn default_threshold() -> i64 {
    10
}

/// The rings as stored: canary share, soak, failure threshold, and the note
/// saying why when the server chose them otherwise than by default.
struct ChosenRings {
    canary_percent: i64,
    soak_seconds: i64,
    failure_threshold_percent: i64,
    note: Option<String>,
}

/// Fills what the operator left out; a small fleet goes all at once.
async fn choose_rings(
    st: &AppState,
    org_id: &str,
    asked: Rings,
    tags: &[String],
    query: Option<&str>,
) -> ApiResult<ChosenRings> {
    use crate::domain::rollout::{DEFAULT_CANARY_PERCENT, DEFAULT_SOAK_SECONDS, default_rings};
    // Only rings left wholly to the server depend on the fleet's size.
    let (canary, soak, note) = match (asked.canary_percent, asked.soak_seconds) {
        (None, None) => default_rings(crate::domain::targeting::reached(st, org_id, tags, query).await?.len()),
        (c, s) => (c.unwrap_or(DEFAULT_CANARY_PERCENT), s.unwrap_or(DEFAULT_SOAK_SECONDS), None),
    };
    let rings = ChosenRings {
        canary_percent: canary,
        soak_seconds: soak,
        failure_threshold_percent: asked.failure_threshold_percent,
        note,
    };
    if !(0..=100).contains(&rings.canary_percent) || !(0..=100).contains(&rings.failure_threshold_percent) {
        return Err(ApiError::BadRequest("canary_percent and failure_threshold_percent must be 0-100".into()));
    }
    if !(0..=90 * 86_400).contains(&rings.soak_seconds) {
        return Err(ApiError::BadRequest("soak_seconds must be 0-7776000".into()));
    }
    Ok(rings)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeployment {
    name: String,
    kind: Kind,
    patch_id: Option<String>,
    baseline: Option<String>,
    scope: Option<Scope>,
    start_at: Option<String>,
    window: Option<String>,
    rings: Option<Rings>,
    reboot_policy: Option<String>,
}

pub async fn create_deployment(
    State(st): State<AppState>,
    user: User,
    ApiJson(d): ApiJson<NewDeployment>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    crate::domain::names::check_name("deployment", &d.name)?;
    let (tags, query_name) = match d.scope {
        None => (Vec::new(), None),
        Some(Scope { tags: Some(_), query: Some(_) }) => {
            return Err(ApiError::BadRequest(
                "scope takes either tags or query (a saved query's name), not both".into(),
            ));
        }
        Some(Scope { tags, query }) => (tags.unwrap_or_default(), query),
    };
    crate::domain::names::check_tags(&tags)?;
    let asked_rings = d.rings.unwrap_or(Rings { failure_threshold_percent: default_threshold(), ..Rings::default() });
    let reboot = d.reboot_policy.unwrap_or_else(|| "if-required".into());
    if !matches!(reboot.as_str(), "if-required" | "never" | "always") {
        return Err(ApiError::BadRequest(format!("reboot_policy {reboot:?} must be if-required, never or always")));
    }
    let start_at = match &d.start_at {
        None => now(),
        Some(t) => {
            parse_time(t).ok_or_else(|| ApiError::BadRequest(format!("start_at {t:?} is not an RFC 3339 time")))?
        }
    };
    let mut tx = st.db.begin().await?;
    let (patch_id, baseline_id) = match d.kind {
        Kind::Hotpatch | Kind::Rollback => {
            let pid = d
                .patch_id
                .ok_or_else(|| ApiError::BadRequest(format!("a {} deployment needs patch_id", d.kind.as_str())))?;
            let found = sqlx::query("SELECT patch_id FROM hotpatches WHERE org_id = $1 AND patch_id = $2")
                .bind(&user.org_id)
                .bind(&pid)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(ApiError::NotFound(format!("no hotpatch {pid:?} in this organisation's catalog")));
            }
            if d.baseline.is_some() {
                return Err(ApiError::BadRequest("baseline is only for baseline deployments".into()));
            }
            (Some(pid), None)
        }
        Kind::Baseline => {
            let name = d.baseline.ok_or_else(|| ApiError::BadRequest("a baseline deployment needs baseline".into()))?;
            let row = sqlx::query("SELECT id FROM baselines WHERE org_id = $1 AND name = $2")
                .bind(&user.org_id)
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no baseline {name:?} in this organisation")))?;
            if d.patch_id.is_some() {
                return Err(ApiError::BadRequest("patch_id is only for hotpatch and rollback deployments".into()));
            }
            (None, Some(row.try_get::<String, _>(0)?))
        }
    };
    let window_id = match &d.window {
        None => None,
        Some(name) => {
            let row = sqlx::query("SELECT id FROM maintenance_windows WHERE org_id = $1 AND name = $2")
                .bind(&user.org_id)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no maintenance window {name:?}")))?;
            Some(row.try_get::<String, _>(0)?)
        }
    };
    let (query_id, query_text) = match &query_name {
        None => (None, None),
        Some(name) => {
            // Shared lock: a concurrent delete of the query waits for this deployment (and then refuses).
            let sql = format!(
                "SELECT id, query FROM saved_queries WHERE org_id = $1 AND name = $2{}",
                crate::domain::targeting::lock_clause(st.db.backend, false)
            );
            let row = sqlx::query(&sql)
                .bind(&user.org_id)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no saved query {name:?} in this organisation")))?;
            (Some(row.try_get::<String, _>(0)?), Some(row.try_get::<String, _>(1)?))
        }
    };
    let rings = choose_rings(&st, &user.org_id, asked_rings, &tags, query_text.as_deref()).await?;
    let id = new_id()?;
    sqlx::query(
        "INSERT INTO deployments (id, org_id, name, kind, patch_id, baseline_id, scope_tags, start_at, window_id, canary_percent, \
         soak_seconds, failure_threshold_percent, reboot_policy, state, created, scope_query_id, rings_note) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'active', $14, $15, $16)",
    )
    .bind(&id)
    .bind(&user.org_id)
    .bind(&d.name)
    .bind(d.kind.as_str())
    .bind(&patch_id)
    .bind(&baseline_id)
    .bind(serde_json::to_string(&tags)?)
    .bind(start_at)
    .bind(&window_id)
    .bind(rings.canary_percent)
    .bind(rings.soak_seconds)
    .bind(rings.failure_threshold_percent)
    .bind(&reboot)
    .bind(now())
    .bind(&query_id)
    .bind(&rings.note)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &user.org_id,
        &user.actor(),
        "deployment.create",
        &d.name,
        json!({ "id": id, "kind": d.kind, "patch_id": patch_id, "baseline_id": baseline_id, "tags": tags,
                "query": query_name, "window": d.window,
                "canary_percent": rings.canary_percent, "soak_seconds": rings.soak_seconds,
                "failure_threshold_percent": rings.failure_threshold_percent, "rings_note": rings.note,
                "reboot_policy": reboot }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "name": d.name, "state": "active", "canary_percent": rings.canary_percent,
                    "soak_seconds": rings.soak_seconds, "rings_note": rings.note })))
}

pub fn deployment_json(d: &Deployment, canary: &RingProgress, rest: &RingProgress) -> Value {
    let scope = match &d.query {
        // A null name: the saved query was deleted after the deployment was cancelled.
        Some(q) => json!({ "query": q.name, "query_id": q.id, "query_text": q.text }),
        None => json!({ "tags": d.tags }),
    };
    json!({
        "id": d.id, "name": d.name, "kind": d.kind, "patch_id": d.patch_id, "baseline_id": d.baseline_id,
        "scope": scope, "start_at": rfc3339(d.start_at),
        "window": d.window.as_ref().map(|(n, _)| n),
        "rings": { "canary_percent": d.canary_percent, "soak_seconds": d.soak_seconds,
                   "failure_threshold_percent": d.failure_threshold_percent, "note": d.rings_note,
                   "canary": canary, "rest": rest },
        "reboot_policy": d.reboot_policy, "state": d.state, "state_reason": d.state_reason,
    })
}

pub async fn list_deployments(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for d in deployments(&st, &user.org_id, false).await? {
        out.push(full_json(&st, &user.org_id, &d).await?);
    }
    Ok(Json(json!({ "deployments": out })))
}

pub async fn get_deployment(State(st): State<AppState>, user: User, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let d = deployments(&st, &user.org_id, false)
        .await?
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no deployment {id:?} in this organisation")))?;
    Ok(Json(full_json(&st, &user.org_id, &d).await?))
}

/// A deployment as the API shows it: with its rings' progress and what a
/// closed window left ("window_exceeded", null when nothing).
async fn full_json(st: &AppState, org_id: &str, d: &Deployment) -> ApiResult<Value> {
    let (c, r) = progress(st, org_id, d).await?;
    let mut v = deployment_json(d, &c, &r);
    let exceeded = crate::domain::exceeded::left_by_window(st, org_id, d, now()).await?;
    v["window_exceeded"] = exceeded.map_or(Value::Null, |e| e.to_json());
    Ok(v)
}

async fn set_state(
    st: &AppState,
    user: &User,
    id: &str,
    from: &[&str],
    to: &str,
    action: &str,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    let mut tx = st.db.begin().await?;
    let row = sqlx::query("SELECT state FROM deployments WHERE org_id = $1 AND id = $2")
        .bind(&user.org_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no deployment {id:?} in this organisation")))?;
    let state: String = row.try_get(0)?;
    if !from.contains(&state.as_str()) {
        return Err(ApiError::Conflict(format!(
            "deployment is {state}; {action} needs it to be {}",
            from.join(" or ")
        )));
    }
    sqlx::query("UPDATE deployments SET state = $1, state_reason = $2 WHERE id = $3")
        .bind(to)
        .bind(format!("{action} by {}", user.name))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // A machine that failed is not offered the deployment again until an operator
    // decides so; resuming is that decision. The failures stay in work_history.
    let reoffered = if action == "resume" {
        sqlx::query("DELETE FROM work_results WHERE deployment_id = $1 AND status = 'failed'")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
    } else {
        0
    };
    audit::record(
        &mut tx,
        &user.org_id,
        &user.actor(),
        &format!("deployment.{action}"),
        id,
        json!({ "from": state, "reoffered_to_failed_machines": reoffered }),
    )
    .await?;
    tx.commit().await?;
    if reoffered > 0 {
        crate::domain::work_flags::org_changed(st, &user.org_id).await?;
    }
    Ok(Json(json!({ "id": id, "state": to })))
}

pub async fn cancel_deployment(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_state(&st, &user, &id, &["active", "halted", "paused"], "cancelled", "cancel").await
}

pub async fn resume_deployment(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_state(&st, &user, &id, &["halted", "paused"], "active", "resume").await
}

/// Stops offering the deployment's work until it is resumed; work already
/// handed out finishes and its results are still recorded.
pub async fn pause_deployment(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_state(&st, &user, &id, &["active"], "paused", "pause").await
}
