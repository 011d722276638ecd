//! The agent check-in: the machine reports its facts, the targets its processes
//! map with their applied levels, and the results of past work; the answer says
//! what to do now. The answer carries an ETag, and an unchanged answer costs a
//! 304 with no body.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;

use crate::audit;
use crate::auth::{Machine, SignedJson, claim_sequence};
pub use crate::domain::compliance::INTERVAL_SECONDS;
pub use crate::domain::entitlement::entitled;
use crate::domain::rollout::{Deployment, Kind, deployments_for, in_canary};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tiers::Gate;
use crate::util::{day_of, new_id, now, rfc3339, sha256_hex};

/// Cores are billed as reported, so a report is a claim: bounded (the largest
/// single systems have a few thousand), and a jump by more than
/// `CORE_JUMP_FACTOR` from the last report is flagged in the audit log.
pub const MAX_CORES: u32 = 4096;
pub const CORE_JUMP_FACTOR: i64 = 4;
pub const JITTER_SECONDS: i64 = 60;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    pub hostname: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub arch: String,
    pub cores: u32,
    #[serde(default)]
    pub readiness: Value,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetReport {
    pub build_id: String,
    pub file_name: String,
    #[serde(default)]
    pub processes: u32,
    pub applied_patch_id: Option<String>,
    #[serde(default)]
    pub applied_level: u32,
    /// Set when the agent could not inspect this target (the "check failed" state).
    pub error: Option<String>,
    /// Each process mapping the target (agents before it send none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process_list: Vec<crate::domain::processes::ProcessFacts>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkResult {
    pub deployment_id: String,
    /// "applied", "rolled-back" or "failed".
    pub status: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    pub facts: Facts,
    #[serde(default)]
    pub targets: Vec<TargetReport>,
    #[serde(default)]
    pub results: Vec<WorkResult>,
    #[serde(default)]
    pub catalogs_stale: Vec<crate::domain::signed_documents::StaleCatalog>,
}

pub fn validate(c: &CheckIn) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    let f = &c.facts;
    if f.hostname.is_empty() || f.hostname.len() > 255 {
        return bad("facts.hostname must be 1-255 characters".into());
    }
    if f.os.len() > 255 || f.kernel.len() > 255 || f.arch.len() > 32 {
        return bad("facts.os and facts.kernel must be at most 255 characters, facts.arch 32".into());
    }
    if f.cores == 0 || f.cores > MAX_CORES {
        return bad(format!("facts.cores {} must be between 1 and {MAX_CORES}", f.cores));
    }
    if !(f.readiness.is_null() || f.readiness.is_object()) || f.readiness.to_string().len() > 16_384 {
        return bad("facts.readiness must be a JSON object of at most 16 KiB".into());
    }
    if c.targets.len() > 4096 || c.results.len() > 1024 {
        return bad("at most 4096 targets and 1024 results per check-in".into());
    }
    for t in &c.targets {
        crate::domain::catalog::check_build_id(&t.build_id)?;
        if t.file_name.is_empty() || t.file_name.len() > 255 {
            return bad(format!("target {}: file_name must be 1-255 characters", t.build_id));
        }
        if t.applied_patch_id.as_ref().is_some_and(|p| p.len() > 64) || t.error.as_ref().is_some_and(|e| e.len() > 1000)
        {
            return bad(format!("target {}: applied_patch_id at most 64 characters, error at most 1000", t.build_id));
        }
        crate::domain::processes::check(&t.build_id, &t.process_list).map_err(ApiError::BadRequest)?;
    }
    for r in &c.results {
        if !matches!(r.status.as_str(), "applied" | "rolled-back" | "failed") {
            return bad(format!("result status {:?} must be applied, rolled-back or failed", r.status));
        }
        if r.deployment_id.len() > 64 || r.detail.len() > 4000 {
            return bad("result deployment_id at most 64 characters, detail at most 4000".into());
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct HotpatchWork {
    deployment_id: String,
    patch_id: String,
    build_id: String,
    file_name: String,
    level: i64,
    artifact_sha256: String,
    url: String,
}

#[derive(Debug, Serialize)]
struct BaselineWork {
    deployment_id: String,
    baseline: String,
    file_names: Vec<String>,
    restart: bool,
    reboot_policy: String,
    reason: String,
    window: Option<Value>,
}

#[derive(Debug, Serialize)]
struct RollbackWork {
    deployment_id: String,
    patch_id: String,
    build_id: String,
}

pub async fn check_in(
    State(st): State<AppState>,
    headers: HeaderMap,
    SignedJson { machine, mut body }: SignedJson<CheckIn>,
) -> ApiResult<Response> {
    validate(&body)?;
    crate::domain::signed_documents::validate_stale(&body.catalogs_stale)?;
    let t = now();
    let ignored = drop_foreign_results(&st, &machine, &mut body, t).await?;
    record(&st, &machine, &body, t).await?;
    crate::domain::signed_documents::record_stale(&st, &machine.id, &body.catalogs_stale).await?;
    let mut answer = instructions(&st, &machine, &body, t).await?;
    if let Some(notes) = answer["notes"].as_array_mut() {
        notes.extend(ignored.iter().map(|id| {
            Value::from(format!("result for deployment {id} ignored: that deployment does not reach this machine"))
        }));
    }
    crate::domain::signed_documents::add_to_answer(&st, &machine.org_id, &mut answer).await?;
    let text = answer.to_string();
    let etag = format!("\"{}\"", &sha256_hex(text.as_bytes())[..32]);
    let unchanged = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == etag);
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.to_string()))?;
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [(header::ETAG, etag_value), (header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        text,
    )
        .into_response())
}

/// A machine reports results only for deployments that reach it: in its scope
/// (by the facts just reported) with its ring started, or that it reported on
/// before. Anything else would let one machine halt (or pass) another group's
/// rollout, so such results are dropped (and named in the answer's notes) while
/// the rest of the check-in counts: refusing it whole would leave an agent whose
/// scope changed since it applied (retagged, rebooted into another kernel)
/// resending the result, refused, forever. Unknown deployments are left to
/// `record` (404). Returns the dropped results' deployments.
async fn drop_foreign_results(st: &AppState, m: &Machine, c: &mut CheckIn, t: i64) -> ApiResult<Vec<String>> {
    if c.results.is_empty() {
        return Ok(Vec::new());
    }
    let all = deployments_for(st, &m.org_id, false, Some(&m.id)).await?;
    let files: Vec<&str> = c.targets.iter().map(|x| x.file_name.as_str()).collect();
    let facts = reported_facts(&c.facts, &m.tags, &files);
    let foreign: Vec<String> = c
        .results
        .iter()
        .filter(|r| {
            all.iter()
                .find(|d| d.id == r.deployment_id)
                .is_some_and(|d| d.machine_result.is_none() && !(d.scope_matches(&facts) && d.ring_started(&m.id, t)))
        })
        .map(|r| r.deployment_id.clone())
        .collect();
    if !foreign.is_empty() {
        tracing::warn!(machine = %m.id, deployments = ?foreign, "results for deployments that do not reach the machine ignored");
        c.results.retain(|r| !foreign.contains(&r.deployment_id));
    }
    Ok(foreign)
}

/// Flags (audit log, warning) a core count far above the machine's last one:
/// billing follows reports, so a sudden jump is for an operator to see.
async fn flag_core_jump(tx: &mut sqlx::Transaction<'_, sqlx::Any>, m: &Machine, cores: u32) -> ApiResult<()> {
    let cores = i64::from(cores);
    if m.cores > 0 && cores > CORE_JUMP_FACTOR * m.cores {
        tracing::warn!(machine = %m.id, from = m.cores, to = cores, "reported cores jumped");
        let actor = format!("machine:{}", m.id);
        audit::record(tx, &m.org_id, &actor, "machine.cores-jump", &m.id, json!({ "from": m.cores, "to": cores }))
            .await?;
    }
    Ok(())
}

/// Writes what the machine reported, in one transaction: facts and targets only
/// when they changed (hash compare), work results, last-seen and the day's metering.
async fn record(st: &AppState, m: &Machine, c: &CheckIn, t: i64) -> ApiResult<()> {
    let state_hash = sha256_hex(serde_json::to_string(&(&c.facts, &c.targets))?.as_bytes());
    let mut tx = st.db.begin().await?;
    if c.results.is_empty() && st.db.backend == crate::db::Backend::Postgres {
        // Liveness and metering are re-sent at the next check-in, so they need not
        // wait for the WAL flush; work results (which the agent then forgets) do.
        sqlx::query("SET LOCAL synchronous_commit TO OFF").execute(&mut *tx).await?;
    }
    claim_sequence(&mut tx, m, Some(t)).await?;
    if state_hash != m.state_hash {
        let f = &c.facts;
        flag_core_jump(&mut tx, m, f.cores).await?;
        sqlx::query(
            "UPDATE machines SET hostname = $1, os = $2, kernel = $3, arch = $4, cores = $5, readiness = $6, state_hash = $7 WHERE id = $8",
        )
        .bind(&f.hostname)
        .bind(&f.os)
        .bind(&f.kernel)
        .bind(&f.arch)
        .bind(i64::from(f.cores))
        .bind(if f.readiness.is_null() { "{}".to_string() } else { f.readiness.to_string() })
        .bind(&state_hash)
        .bind(&m.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM machine_targets WHERE machine_id = $1").bind(&m.id).execute(&mut *tx).await?;
        let mut seen = std::collections::BTreeSet::new();
        for target in &c.targets {
            if !seen.insert(target.build_id.as_str()) {
                return Err(ApiError::BadRequest(format!("target {} is reported twice", target.build_id)));
            }
            sqlx::query(
                "INSERT INTO machine_targets (machine_id, build_id, file_name, processes, applied_patch_id, applied_level, error, \
                 process_list) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&m.id)
            .bind(&target.build_id)
            .bind(&target.file_name)
            .bind(i64::from(target.processes))
            .bind(&target.applied_patch_id)
            .bind(i64::from(target.applied_level))
            .bind(&target.error)
            .bind(crate::domain::processes::column(&target.process_list))
            .execute(&mut *tx)
            .await?;
        }
    }
    // Core-days: the most cores seen on a day counts for that day.
    sqlx::query(
        "INSERT INTO usage_days (machine_id, org_id, day, cores) VALUES ($1, $2, $3, $4) ON CONFLICT (machine_id, day) \
         DO UPDATE SET cores = CASE WHEN excluded.cores > usage_days.cores THEN excluded.cores ELSE usage_days.cores END",
    )
    .bind(&m.id)
    .bind(&m.org_id)
    .bind(day_of(t))
    .bind(i64::from(c.facts.cores))
    .execute(&mut *tx)
    .await?;
    let touched = record_results(&mut tx, m, c, t).await?;
    if state_hash != m.state_hash || !touched.is_empty() {
        crate::domain::work_flags::machine_changed(st, &mut tx, &m.org_id, &m.id).await?;
    }
    for id in touched {
        halt_if_failing(&mut tx, &m.org_id, &id).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The work results of a check-in; returns the deployments they touched.
async fn record_results(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    m: &Machine,
    c: &CheckIn,
    t: i64,
) -> ApiResult<Vec<String>> {
    let mut touched = Vec::new();
    for r in &c.results {
        let d = sqlx::query("SELECT canary_percent FROM deployments WHERE id = $1 AND org_id = $2")
            .bind(&r.deployment_id)
            .bind(&m.org_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("result for unknown deployment {:?}", r.deployment_id)))?;
        let ring = if in_canary(&r.deployment_id, &m.id, d.try_get(0)?) { "canary" } else { "rest" };
        sqlx::query(
            "INSERT INTO work_results (machine_id, deployment_id, ring, status, detail, at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (machine_id, deployment_id) DO UPDATE SET status = excluded.status, detail = excluded.detail, at = excluded.at",
        )
        .bind(&m.id)
        .bind(&r.deployment_id)
        .bind(ring)
        .bind(&r.status)
        .bind(&r.detail)
        .bind(t)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO work_history (id, org_id, machine_id, deployment_id, status, detail, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new_id()?)
        .bind(&m.org_id)
        .bind(&m.id)
        .bind(&r.deployment_id)
        .bind(&r.status)
        .bind(&r.detail)
        .bind(t)
        .execute(&mut **tx)
        .await?;
        touched.push(r.deployment_id.clone());
    }
    Ok(touched)
}

/// Halts a deployment whose failure share passed its threshold. The conditional
/// UPDATE makes the halt happen once however many replicas see the failure.
async fn halt_if_failing(tx: &mut sqlx::Transaction<'_, sqlx::Any>, org_id: &str, id: &str) -> ApiResult<()> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(CASE WHEN r.status = 'failed' THEN 1 ELSE 0 END), 0) AS BIGINT), d.failure_threshold_percent \
         FROM work_results r JOIN deployments d ON d.id = r.deployment_id WHERE r.deployment_id = $1 GROUP BY d.failure_threshold_percent",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let (total, failed, threshold): (i64, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    if total > 0 && failed * 100 > threshold * total {
        let reason = format!("halted: {failed} of {total} machines failed, above the {threshold}% threshold");
        let done = sqlx::query(
            "UPDATE deployments SET state = 'halted', state_reason = $1 WHERE id = $2 AND state = 'active'",
        )
        .bind(&reason)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            tracing::warn!(deployment = id, "{reason}");
            audit::record(tx, org_id, "system", "deployment.halt", id, json!({ "failed": failed, "total": total }))
                .await?;
        }
    }
    Ok(())
}

async fn instructions(st: &AppState, m: &Machine, c: &CheckIn, t: i64) -> ApiResult<Value> {
    let entitled = entitled(st, &m.org_id, t).await?;
    let files: Vec<&str> = c.targets.iter().map(|x| x.file_name.as_str()).collect();
    let facts = reported_facts(&c.facts, &m.tags, &files);
    let active: Vec<Deployment> = deployments_for(st, &m.org_id, true, Some(&m.id))
        .await?
        .into_iter()
        .filter(|d| d.scope_matches(&facts) && t >= d.start_at)
        .collect();
    let (gate, tier) = if active.iter().any(|d| d.kind == Kind::Hotpatch) {
        (Gate::load(st, &m.org_id).await?, crate::tiers::machine_tier(st, &m.id).await?)
    } else {
        (Gate::default(), None)
    };
    let mut hotpatches = Vec::new();
    let mut baselines = Vec::new();
    let mut rollbacks = Vec::new();
    let mut notes = Vec::new();
    for d in &active {
        // A machine that failed a deployment is not asked again; an operator decides.
        if !d.ring_started(&m.id, t) || d.machine_result.as_deref() == Some("failed") {
            continue;
        }
        let window_open = d.window.as_ref().is_none_or(|(_, w)| w.is_open(t));
        match d.kind {
            Kind::Hotpatch | Kind::Rollback => {
                let (Some(pid), Some(h)) = (&d.patch_id, &d.hotpatch) else {
                    continue;
                };
                let (build_id, file_name, level, sha) =
                    (h.build_id.clone(), h.file_name.clone(), h.level, h.artifact_sha256.clone());
                let Some(target) = c.targets.iter().find(|x| x.build_id == build_id) else {
                    continue;
                };
                if d.kind == Kind::Rollback {
                    if target.applied_patch_id.as_deref() == Some(pid.as_str()) && window_open {
                        rollbacks.push(RollbackWork { deployment_id: d.id.clone(), patch_id: pid.clone(), build_id });
                    }
                    continue;
                }
                if i64::from(target.applied_level) >= level {
                    continue;
                }
                if let Some(why) = gate.hold(tier.as_deref(), &facts, pid, &build_id, level, t) {
                    notes.push(why);
                    continue;
                }
                if !entitled {
                    notes.push(format!("{pid}: not entitled to hotpatches; install the next baseline instead"));
                    continue;
                }
                if !window_open {
                    notes.push(window_note(d, &m.id, pid, t));
                    continue;
                }
                hotpatches.push(HotpatchWork {
                    deployment_id: d.id.clone(),
                    patch_id: pid.clone(),
                    build_id,
                    file_name,
                    level,
                    url: format!("/api/v1/artifacts/{sha}"),
                    artifact_sha256: sha,
                });
            }
            Kind::Baseline => {
                let Some(bid) = &d.baseline_id else { continue };
                let rows = sqlx::query("SELECT t.file_name, t.build_id, b.name FROM baseline_targets t JOIN baselines b ON b.id = t.baseline_id WHERE t.baseline_id = $1")
                    .bind(bid)
                    .fetch_all(&st.db.pool)
                    .await?;
                let mut name = String::new();
                let mut outdated = Vec::new();
                for r in &rows {
                    let (file, build, n): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                    name = n;
                    if c.targets.iter().any(|x| x.file_name == file && x.build_id != build) && !outdated.contains(&file)
                    {
                        outdated.push(file);
                    }
                }
                if outdated.is_empty() && d.reboot_policy != "always" {
                    continue;
                }
                let restart = match d.reboot_policy.as_str() {
                    "never" => false,
                    "always" => true,
                    _ => !outdated.is_empty(),
                };
                let window = d.window.as_ref().and_then(|(n, w)| {
                    w.current_or_next(t).map(|(s, e)| json!({ "name": n, "start": rfc3339(s), "end": rfc3339(e) }))
                });
                baselines.push(BaselineWork {
                    deployment_id: d.id.clone(),
                    reason: format!("baseline {name} is out"),
                    baseline: name,
                    file_names: outdated,
                    restart,
                    reboot_policy: d.reboot_policy.clone(),
                    window,
                });
            }
        }
    }
    Ok(answer(entitled, hotpatches, baselines, rollbacks, notes))
}

/// Why a hotpatch waits outside its window: the window closed before this
/// machine's turn came ("window exceeded"), or it simply is not open yet.
fn window_note(d: &Deployment, machine_id: &str, pid: &str, t: i64) -> String {
    let name = d.window.as_ref().map(|(n, _)| n.as_str()).unwrap_or("");
    match d.window_exceeded(machine_id, t) {
        Some((ended, next)) => format!(
            "{pid}: window exceeded: maintenance window {name} ended at {} before this machine's turn; \
             it continues when the window opens next{}",
            rfc3339(ended),
            next.map(|s| format!(" at {}", rfc3339(s))).unwrap_or_default()
        ),
        None => format!("{pid}: waiting for maintenance window {name}"),
    }
}

fn answer(
    entitled: bool,
    hotpatches: Vec<HotpatchWork>,
    baselines: Vec<BaselineWork>,
    rollbacks: Vec<RollbackWork>,
    notes: Vec<String>,
) -> Value {
    json!({
        "interval_seconds": INTERVAL_SECONDS,
        "jitter_seconds": JITTER_SECONDS,
        "entitled": entitled,
        "hotpatches": hotpatches,
        "baselines": baselines,
        "rollbacks": rollbacks,
        "notes": notes,
    })
}

/// The facts a check-in just reported, in the form scopes are decided on.
fn reported_facts<'a>(
    reported: &'a Facts,
    tags: &'a [String],
    target_files: &'a [&'a str],
) -> hotpatch_query::Facts<'a> {
    hotpatch_query::Facts {
        hostname: &reported.hostname,
        os: &reported.os,
        kernel: &reported.kernel,
        arch: &reported.arch,
        cores: i64::from(reported.cores),
        tags,
        targets: target_files,
    }
}
