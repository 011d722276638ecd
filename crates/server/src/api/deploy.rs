//! Maintenance windows and deployments: what to roll out (a hotpatch, a baseline,
//! a rollback), to which machines (tags, or a saved query), when (start time, window), in which
//! rings (canary share, soak time, failure threshold), with which reboot policy.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{new_id, now, parse_time, rfc3339, sha256_hex};
use crate::windows::{Window, day_name, parse_day, parse_start};
use hotpatch_query::{self as query, Facts, Field, Query};

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
    super::access::check_name("window", &w.name)?;
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
    super::access::ensure_name_free(&mut tx, super::access::Named::MaintenanceWindow, &user.org_id, &w.name).await?;
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

pub fn window_from_columns(days: &str, start_minute: i64, duration_minutes: i64, time_zone: String) -> Window {
    Window { days: days.split(',').filter_map(parse_day).collect(), start_minute, duration_minutes, time_zone }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Hotpatch,
    Baseline,
    Rollback,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hotpatch => "hotpatch",
            Kind::Baseline => "baseline",
            Kind::Rollback => "rollback",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "hotpatch" => Some(Kind::Hotpatch),
            "baseline" => Some(Kind::Baseline),
            "rollback" => Some(Kind::Rollback),
            _ => None,
        }
    }
}

/// Which machines a deployment reaches: those carrying all `tags`, or those the
/// saved query named `query` matches; neither means every machine.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    tags: Option<Vec<String>>,
    query: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rings {
    #[serde(default = "default_canary")]
    canary_percent: i64,
    #[serde(default = "default_soak")]
    soak_seconds: i64,
    #[serde(default = "default_threshold")]
    failure_threshold_percent: i64,
}

fn default_canary() -> i64 {
    10
}
fn default_soak() -> i64 {
    3600
}
fn default_threshold() -> i64 {
    10
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
    super::access::check_name("deployment", &d.name)?;
    let (tags, query_name) = match d.scope {
        None => (Vec::new(), None),
        Some(Scope { tags: Some(_), query: Some(_) }) => {
            return Err(ApiError::BadRequest(
                "scope takes either tags or query (a saved query's name), not both".into(),
            ));
        }
        Some(Scope { tags, query }) => (tags.unwrap_or_default(), query),
    };
    super::fleet::check_tags(&tags)?;
    let rings = d.rings.unwrap_or(Rings {
        canary_percent: default_canary(),
        soak_seconds: default_soak(),
        failure_threshold_percent: default_threshold(),
    });
    if !(0..=100).contains(&rings.canary_percent) || !(0..=100).contains(&rings.failure_threshold_percent) {
        return Err(ApiError::BadRequest("canary_percent and failure_threshold_percent must be 0-100".into()));
    }
    if !(0..=90 * 86_400).contains(&rings.soak_seconds) {
        return Err(ApiError::BadRequest("soak_seconds must be 0-7776000".into()));
    }
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
    let query_id = match &query_name {
        None => None,
        Some(name) => {
            // Shared lock: a concurrent delete of the query waits for this deployment (and then refuses).
            let sql = format!(
                "SELECT id FROM saved_queries WHERE org_id = $1 AND name = $2{}",
                super::queries::lock_clause(st.db.backend, false)
            );
            let row = sqlx::query(&sql)
                .bind(&user.org_id)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no saved query {name:?} in this organisation")))?;
            Some(row.try_get::<String, _>(0)?)
        }
    };
    let id = new_id()?;
    sqlx::query(
        "INSERT INTO deployments (id, org_id, name, kind, patch_id, baseline_id, scope_tags, start_at, window_id, canary_percent, \
         soak_seconds, failure_threshold_percent, reboot_policy, state, created, scope_query_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'active', $14, $15)",
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
                "failure_threshold_percent": rings.failure_threshold_percent, "reboot_policy": reboot }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "name": d.name, "state": "active" })))
}

/// Ring membership is a pure function of deployment and machine, so every
/// replica puts a machine in the same ring without sharing memory.
pub fn in_canary(deployment_id: &str, machine_id: &str, canary_percent: i64) -> bool {
    let h = sha256_hex(format!("{deployment_id}/{machine_id}").as_bytes());
    let bucket = u64::from_str_radix(&h[..8], 16).unwrap_or(0) % 100;
    (bucket as i64) < canary_percent
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    pub patch_id: Option<String>,
    pub baseline_id: Option<String>,
    /// Scope by tags (all must be on the machine); ignored when `query` is set.
    pub tags: Vec<String>,
    /// Scope by a saved query.
    pub query: Option<ScopeQuery>,
    pub start_at: i64,
    pub window: Option<(String, Window)>,
    pub canary_percent: i64,
    pub soak_seconds: i64,
    pub failure_threshold_percent: i64,
    pub reboot_policy: String,
    pub state: String,
    pub state_reason: String,
    /// For hotpatch and rollback deployments: the catalog entry.
    pub hotpatch: Option<HotpatchRef>,
    /// The result the machine asked about (see [`deployments_for`]) reported, if any.
    pub machine_result: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HotpatchRef {
    pub build_id: String,
    pub file_name: String,
    pub level: i64,
    pub artifact_sha256: String,
}

/// A deployment's saved query, as loaded with the deployment (one JOIN) and parsed once.
#[derive(Debug, Clone)]
pub struct ScopeQuery {
    pub id: String,
    /// None once the query was deleted (only cancelled deployments can be left so).
    pub name: Option<String>,
    pub text: Option<String>,
    /// None when deleted or unreadable: the deployment then reaches no machine.
    pub parsed: Option<Arc<Query>>,
}

impl Deployment {
    /// Whether the machine with these facts is in the deployment's scope.
    pub fn scope_matches(&self, facts: &Facts<'_>) -> bool {
        match &self.query {
            Some(q) => q.parsed.as_ref().is_some_and(|p| p.matches(facts)),
            None => self.tags.iter().all(|t| facts.tags.contains(t)),
        }
    }

    /// Whether deciding the scope needs the machines' target file names.
    pub fn scope_uses_targets(&self) -> bool {
        self.query.as_ref().and_then(|q| q.parsed.as_ref()).is_some_and(|p| p.uses(Field::Target))
    }

    /// The scope in words, for the web UI.
    pub fn scope_label(&self) -> String {
        match &self.query {
            Some(ScopeQuery { name: Some(name), .. }) => format!("query {name}"),
            Some(ScopeQuery { name: None, .. }) => "query (deleted)".into(),
            None if self.tags.is_empty() => "all machines".into(),
            None => format!("tags {}", self.tags.join(", ")),
        }
    }

    /// When the ring of this machine starts.
    pub fn ring_start(&self, machine_id: &str) -> i64 {
        if in_canary(&self.id, machine_id, self.canary_percent) {
            self.start_at
        } else {
            self.start_at + self.soak_seconds
        }
    }

    /// Whether the ring of this machine has started at `now`.
    pub fn ring_started(&self, machine_id: &str, now: i64) -> bool {
        now >= self.start_at && now >= self.ring_start(machine_id)
    }

    /// "Window exceeded" for a machine that has not reported: the deployment's
    /// window closed after this machine's ring had started, so its work was left
    /// for the next opening. Returns when the window ended and when it opens next.
    /// Derived from the clock and the window each time (nothing to store or to
    /// clear): when the window opens again the work simply continues.
    pub fn window_exceeded(&self, machine_id: &str, now: i64) -> Option<(i64, Option<i64>)> {
        let (_, w) = self.window.as_ref()?;
        if self.state != "active" || self.kind == Kind::Baseline || w.is_open(now) {
            return None;
        }
        let (_, ended) = w.previous(now)?;
        (self.start_at < ended && self.ring_start(machine_id) < ended)
            .then(|| (ended, w.current_or_next(now).map(|(start, _)| start)))
    }
}

/// The facts a check-in just reported, in the form scopes are decided on.
pub fn reported_facts<'a>(
    reported: &'a super::checkin::Facts,
    tags: &'a [String],
    target_files: &'a [&'a str],
) -> Facts<'a> {
    Facts {
        hostname: &reported.hostname,
        os: &reported.os,
        kernel: &reported.kernel,
        arch: &reported.arch,
        cores: i64::from(reported.cores),
        tags,
        targets: target_files,
    }
}

pub async fn deployments(st: &AppState, org_id: &str, only_active: bool) -> ApiResult<Vec<Deployment>> {
    deployments_for(st, org_id, only_active, None).await
}

/// Deployments with their window, catalog entry and saved query (parsed once per
/// distinct query), and, when `machine_id` is given, that machine's result for
/// each: everything a check-in needs in one query.
pub async fn deployments_for(
    st: &AppState,
    org_id: &str,
    only_active: bool,
    machine_id: Option<&str>,
) -> ApiResult<Vec<Deployment>> {
    let sql = format!(
        "SELECT d.id, d.name, d.kind, d.patch_id, d.baseline_id, d.scope_tags, d.start_at, d.canary_percent, d.soak_seconds, \
         d.failure_threshold_percent, d.reboot_policy, d.state, d.state_reason, w.name, w.days, w.start_minute, w.duration_minutes, w.time_zone, \
         h.build_id, h.file_name, h.level, h.artifact_sha256, r.status, d.scope_query_id, q.name, q.query \
         FROM deployments d LEFT JOIN maintenance_windows w ON w.id = d.window_id \
         LEFT JOIN hotpatches h ON h.org_id = d.org_id AND h.patch_id = d.patch_id \
         LEFT JOIN work_results r ON r.deployment_id = d.id AND r.machine_id = $2 \
         LEFT JOIN saved_queries q ON q.id = d.scope_query_id AND q.org_id = d.org_id \
         WHERE d.org_id = $1 {} ORDER BY d.created DESC, d.id",
        if only_active { "AND d.state = 'active'" } else { "" }
    );
    let rows = sqlx::query(&sql).bind(org_id).bind(machine_id.unwrap_or("")).fetch_all(&st.db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut parsed: HashMap<String, Option<Arc<Query>>> = HashMap::new();
    for r in rows {
        let query = match r.try_get::<Option<String>, _>(23)? {
            None => None,
            Some(id) => {
                let (name, text): (Option<String>, Option<String>) = (r.try_get(24)?, r.try_get(25)?);
                let parsed = parsed
                    .entry(id.clone())
                    .or_insert_with(|| {
                        let text = text.as_deref()?;
                        query::parse(text)
                            .inspect_err(|e| {
                                tracing::warn!(query = id, "stored query unreadable, matches nothing: {e}")
                            })
                            .ok()
                            .map(Arc::new)
                    })
                    .clone();
                Some(ScopeQuery { id, name, text, parsed })
            }
        };
        let window = match r.try_get::<Option<String>, _>(13)? {
            None => None,
            Some(name) => Some((
                name,
                window_from_columns(&r.try_get::<String, _>(14)?, r.try_get(15)?, r.try_get(16)?, r.try_get(17)?),
            )),
        };
        let hotpatch = match r.try_get::<Option<String>, _>(18)? {
            None => None,
            Some(build_id) => Some(HotpatchRef {
                build_id,
                file_name: r.try_get(19)?,
                level: r.try_get(20)?,
                artifact_sha256: r.try_get(21)?,
            }),
        };
        out.push(Deployment {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            kind: Kind::parse(&r.try_get::<String, _>(2)?)
                .ok_or_else(|| ApiError::Internal("stored deployment kind unknown".into()))?,
            patch_id: r.try_get(3)?,
            baseline_id: r.try_get(4)?,
            tags: serde_json::from_str(&r.try_get::<String, _>(5)?)?,
            query,
            start_at: r.try_get(6)?,
            canary_percent: r.try_get(7)?,
            soak_seconds: r.try_get(8)?,
            failure_threshold_percent: r.try_get(9)?,
            reboot_policy: r.try_get(10)?,
            state: r.try_get(11)?,
            state_reason: r.try_get(12)?,
            window,
            hotpatch,
            machine_result: r.try_get(22)?,
        });
    }
    Ok(out)
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RingProgress {
    pub machines: i64,
    pub applied: i64,
    pub failed: i64,
    pub started: bool,
}

/// Per ring: how many machines are in scope and what they reported.
pub async fn progress(st: &AppState, org_id: &str, d: &Deployment) -> ApiResult<(RingProgress, RingProgress)> {
    let machines = super::queries::fleet_facts(st, org_id, d.scope_uses_targets()).await?;
    let results = sqlx::query("SELECT ring, status FROM work_results WHERE deployment_id = $1")
        .bind(&d.id)
        .fetch_all(&st.db.pool)
        .await?;
    let (mut canary, mut rest) = (RingProgress::default(), RingProgress::default());
    for m in machines {
        if !m.with_facts(|f| d.scope_matches(f)) {
            continue;
        }
        if in_canary(&d.id, &m.id, d.canary_percent) {
            canary.machines += 1;
        } else {
            rest.machines += 1;
        }
    }
    for r in results {
        let ring = if r.try_get::<String, _>(0)? == "canary" { &mut canary } else { &mut rest };
        match r.try_get::<String, _>(1)?.as_str() {
            "failed" => ring.failed += 1,
            _ => ring.applied += 1,
        }
    }
    let t = now();
    canary.started = t >= d.start_at;
    rest.started = t >= d.start_at + d.soak_seconds;
    Ok((canary, rest))
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
                   "failure_threshold_percent": d.failure_threshold_percent,
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
    let exceeded = super::exceeded::left_by_window(st, org_id, d, now()).await?;
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
        crate::work_flags::org_changed(st, &user.org_id).await?;
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
