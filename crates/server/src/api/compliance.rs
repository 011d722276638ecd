//! Compliance: the state of every target on every machine (applied, pending,
//! nothing to apply, apply failed, check failed, needs restart, unknown), rolled
//! up per machine, per target and per CVE, and exported as CSV.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;

use hotpatch_release::Offer;

use super::catalog::{baselines, hotpatches};
use super::deploy::{Kind, deployments};
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{now, rfc3339};

/// A machine not heard from for this long is "unknown".
pub const STALE_SECONDS: i64 = 3 * crate::api::checkin::INTERVAL_SECONDS + 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    NothingToApply,
    /// A running build the catalog knows nothing of (no hotpatch, no registered
    /// baseline): nobody can say it is up to date.
    NotCovered,
    Applied,
    Unknown,
    Pending,
    NeedsRestart,
    CheckFailed,
    ApplyFailed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::NothingToApply => "nothing-to-apply",
            Status::NotCovered => "not-covered",
            Status::Applied => "applied",
            Status::Unknown => "unknown",
            Status::Pending => "pending",
            Status::NeedsRestart => "needs-restart",
            Status::CheckFailed => "check-failed",
            Status::ApplyFailed => "apply-failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ComplianceRow {
    pub machine_id: String,
    pub hostname: String,
    pub file_name: String,
    pub build_id: String,
    pub applied_level: i64,
    pub latest_level: i64,
    pub status: Status,
    pub detail: String,
    pub cves_open: Vec<String>,
    pub cves_fixed: Vec<String>,
}

/// (build-id, file name, applied level, check error) of one reported target.
type ReportedTarget = (String, String, i64, Option<String>);

/// What decides the state of a running build beyond the machine's own report
/// (seen lately, no check error, no failed deployment): the catalog, the
/// baselines, what is deployed, entitlement and the calendar. Loaded once per
/// request; the overview and the machine list ask it once per distinct build.
pub struct Judge {
    pub catalog: Vec<super::catalog::Hotpatch>,
    baselines: Vec<super::catalog::Baseline>,
    deployed: Vec<String>,
    entitled: bool,
    t: i64,
    grace_days: u16,
}

impl Judge {
    pub async fn load(st: &AppState, org_id: &str, t: i64) -> ApiResult<Judge> {
        let deployed = deployments(st, org_id, true)
            .await?
            .into_iter()
            .filter(|d| d.kind == Kind::Hotpatch)
            .filter_map(|d| d.patch_id)
            .collect();
        Ok(Judge {
            catalog: hotpatches(st, org_id).await?,
            baselines: baselines(st, org_id).await?,
            deployed,
            entitled: crate::api::checkin::entitled(st, org_id, t).await?,
            t,
            grace_days: super::calendar::org_calendar(st, org_id).await?.grace_days(),
        })
    }

    /// The state of `build_id` of `file_name` at `applied` level on a machine
    /// seen lately whose agent could inspect it and that failed no deployment of it.
    pub fn status(&self, build_id: &str, file_name: &str, applied: i64) -> (Status, String) {
        let patches: Vec<_> = self.catalog.iter().filter(|h| h.build_id == build_id).collect();
        let latest = patches.iter().map(|h| h.level).max().unwrap_or(0);
        let deployed_now = |level: i64| {
            patches.iter().any(|h| h.level > applied && h.level <= level && self.deployed.contains(&h.patch_id))
        };
        let offers = crate::offer::OfferContext {
            baselines: &self.baselines,
            hotpatches: &self.catalog,
            entitled: self.entitled,
            now: self.t,
            grace_days: self.grace_days,
        };
        let fallback =
            || fallback_status(&self.baselines, file_name, build_id, applied, latest, self.t, deployed_now(latest));
        match offers.offer(build_id, applied) {
            // The release model decides whenever the build's baseline is registered.
            Some(Ok(Offer::Baseline { reason, .. })) => (Status::NeedsRestart, reason),
            Some(Ok(Offer::Hotpatch { level, reason, .. })) => {
                let how = if deployed_now(i64::from(level)) { "deployed" } else { "not deployed yet" };
                (Status::Pending, format!("{reason} ({how})"))
            }
            Some(Ok(Offer::UpToDate { reason })) if applied > 0 => (Status::Applied, reason),
            Some(Ok(Offer::UpToDate { reason })) => (Status::NothingToApply, reason),
            Some(Err(problem)) => {
                let (status, detail) = fallback();
                (status, format!("{detail} (the release model refused the catalog: {problem})"))
            }
            None => fallback(),
        }
    }
}

/// Computes the compliance of every (machine, target) of an organisation.
pub async fn rows(st: &AppState, org_id: &str) -> ApiResult<Vec<ComplianceRow>> {
    rows_for(st, org_id, None).await
}

/// `AND m.id IN ($2, $3, ...)` for the machines in `only`.
fn only_clause(only: Option<&[String]>) -> String {
    match only {
        None => String::new(),
        Some(ids) => {
            let list: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
            format!(" AND m.id IN ({})", list.join(", "))
        }
    }
}

/// The compliance rows of the machines in `only` (all of the organisation's
/// when None), so a page of a machine list computes just its own rows.
pub async fn rows_for(st: &AppState, org_id: &str, only: Option<&[String]>) -> ApiResult<Vec<ComplianceRow>> {
    if only.is_some_and(|ids| ids.is_empty()) {
        return Ok(Vec::new());
    }
    let t = now();
    let ids = only.unwrap_or_default();
    let sql = format!(
        "SELECT m.id, m.hostname, m.last_seen FROM machines m WHERE m.org_id = $1 AND m.revoked_at IS NULL{} ORDER BY m.hostname, m.id",
        only_clause(only)
    );
    let machines = ids.iter().fold(sqlx::query(&sql).bind(org_id), |q, id| q.bind(id)).fetch_all(&st.db.pool).await?;
    let sql = format!(
        "SELECT t.machine_id, t.build_id, t.file_name, t.applied_level, t.error FROM machine_targets t JOIN machines m ON m.id = t.machine_id \
         WHERE m.org_id = $1{} ORDER BY t.file_name, t.build_id",
        only_clause(only)
    );
    let targets = ids.iter().fold(sqlx::query(&sql).bind(org_id), |q, id| q.bind(id)).fetch_all(&st.db.pool).await?;
    let failures = sqlx::query(
        "SELECT r.machine_id, d.patch_id, r.detail FROM work_results r JOIN deployments d ON d.id = r.deployment_id \
         WHERE d.org_id = $1 AND r.status = 'failed' AND d.kind = 'hotpatch'",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let judge = Judge::load(st, org_id, t).await?;
    let catalog = &judge.catalog;
    let mut by_machine: BTreeMap<String, Vec<ReportedTarget>> = BTreeMap::new();
    for r in &targets {
        by_machine.entry(r.try_get(0)?).or_default().push((r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?));
    }
    let mut out = Vec::new();
    for m in machines {
        let (id, hostname, last_seen): (String, String, Option<i64>) = (m.try_get(0)?, m.try_get(1)?, m.try_get(2)?);
        let stale = last_seen.is_none_or(|s| t - s > STALE_SECONDS);
        let list = by_machine.remove(&id).unwrap_or_default();
        if list.is_empty() {
            let (status, detail) = if stale {
                (
                    Status::Unknown,
                    last_seen.map_or("never checked in".to_string(), |s| format!("last seen {}", rfc3339(s))),
                )
            } else {
                (Status::NothingToApply, "no patchable targets reported".to_string())
            };
            out.push(ComplianceRow {
                machine_id: id.clone(),
                hostname: hostname.clone(),
                file_name: String::new(),
                build_id: String::new(),
                applied_level: 0,
                latest_level: 0,
                status,
                detail,
                cves_open: vec![],
                cves_fixed: vec![],
            });
            continue;
        }
        for (build_id, file_name, applied, error) in list {
            let patches: Vec<_> = catalog.iter().filter(|h| h.build_id == build_id).collect();
            let latest = patches.iter().map(|h| h.level).max().unwrap_or(0);
            let mut cves_open = Vec::new();
            let mut cves_fixed = Vec::new();
            for h in &patches {
                for c in &h.cves {
                    if h.level <= applied { cves_fixed.push(c.clone()) } else { cves_open.push(c.clone()) }
                }
            }
            let failure = failures.iter().find_map(|f| {
                let (mid, pid, detail): (String, Option<String>, String) =
                    (f.try_get(0).ok()?, f.try_get(1).ok()?, f.try_get(2).ok()?);
                let pid = pid?;
                (mid == id && patches.iter().any(|h| h.patch_id == pid && h.level > applied))
                    .then(|| format!("{pid}: {detail}"))
            });
            let (status, detail) = if stale {
                (
                    Status::Unknown,
                    last_seen.map_or("never checked in".to_string(), |s| format!("last seen {}", rfc3339(s))),
                )
            } else if let Some(e) = error {
                (Status::CheckFailed, e)
            } else if let Some(f) = failure {
                (Status::ApplyFailed, f)
            } else {
                judge.status(&build_id, &file_name, applied)
            };
            out.push(ComplianceRow {
                machine_id: id.clone(),
                hostname: hostname.clone(),
                file_name,
                build_id,
                applied_level: applied,
                latest_level: latest,
                status,
                detail,
                cves_open,
                cves_fixed,
            });
        }
    }
    Ok(out)
}

/// For a build in no registered baseline the release model has nothing to go
/// on; the catalog's hotpatches for that build-id and any newer baseline that
/// ships the same file still tell the state.
fn fallback_status(
    all: &[super::catalog::Baseline],
    file_name: &str,
    build_id: &str,
    applied: i64,
    latest: i64,
    t: i64,
    deployed: bool,
) -> (Status, String) {
    if let Some(b) = newer_baseline_for(all, file_name, build_id, t) {
        (Status::NeedsRestart, format!("baseline {b} is out: install it and restart"))
    } else if latest > applied {
        let how = if deployed { "deployed, not yet applied" } else { "available, not deployed" };
        (Status::Pending, format!("level {latest} {how}"))
    } else if latest > 0 && applied == latest {
        (Status::Applied, format!("hotpatch level {applied}"))
    } else if applied > 0 {
        (
            Status::NotCovered,
            format!("level {applied} applied, but this catalog has no hotpatch at that level for this build"),
        )
    } else {
        (
            Status::NotCovered,
            "no catalog entry for this build: not covered by hotpatches or a registered baseline".to_string(),
        )
    }
}

/// The name of a baseline released by `t` that ships a different build of
/// `file_name` and is newer than the baseline `build_id` came from.
fn newer_baseline_for(all: &[super::catalog::Baseline], file_name: &str, build_id: &str, t: i64) -> Option<String> {
    let own = all.iter().filter(|b| b.targets.iter().any(|(_, id)| id == build_id)).map(|b| b.released).max();
    all.iter()
        .filter(|b| b.released <= t && own.is_none_or(|o| b.released > o))
        .filter(|b| b.targets.iter().any(|(f, id)| f == file_name && id != build_id))
        .max_by_key(|b| b.released)
        .map(|b| b.name.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    format: Option<String>,
}

fn wants_csv(f: &Format) -> ApiResult<bool> {
    match f.format.as_deref() {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!("format {other:?} must be json or csv"))),
    }
}

/// What a spreadsheet may take for the start of a formula: the OWASP list (tab
/// and CR included, which some strip before looking) and the fullwidth forms
/// that some spreadsheets read as their ASCII twins.
const FORMULA_STARTS: [char; 10] = ['=', '+', '-', '@', '\t', '\r', '＝', '＋', '－', '＠'];

/// Quotes a CSV field, and defuses cells a spreadsheet would run as a formula.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(FORMULA_STARTS) { format!("'{s}") } else { s.to_string() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

fn csv_response(name: &str, header_line: &str, lines: Vec<Vec<String>>) -> Response {
    let mut body = String::from(header_line);
    body.push('\n');
    for l in lines {
        body.push_str(&l.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        body.push('\n');
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.csv\"")),
        ],
        body,
    )
        .into_response()
}

pub async fn by_machine(State(st): State<AppState>, user: User, Query(f): Query<Format>) -> ApiResult<Response> {
    let csv = wants_csv(&f)?;
    let rows = rows(&st, &user.org_id).await?;
    if csv {
        let lines = rows
            .iter()
            .map(|r| {
                vec![
                    r.machine_id.clone(),
                    r.hostname.clone(),
                    r.file_name.clone(),
                    r.build_id.clone(),
                    r.applied_level.to_string(),
                    r.latest_level.to_string(),
                    r.status.as_str().into(),
                    r.detail.clone(),
                    r.cves_open.join(" "),
                ]
            })
            .collect();
        return Ok(csv_response(
            "compliance-machines",
            "machine_id,hostname,file_name,build_id,applied_level,latest_level,status,detail,open_cves",
            lines,
        ));
    }
    Ok(Json(json!({ "rows": crate::holds::annotate(&st, &user.org_id, &rows).await? })).into_response())
}

#[derive(Debug, Default, Serialize)]
pub struct Counts(pub BTreeMap<&'static str, i64>);

pub async fn by_target(State(st): State<AppState>, user: User, Query(f): Query<Format>) -> ApiResult<Response> {
    let csv = wants_csv(&f)?;
    let mut targets: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for r in rows(&st, &user.org_id).await?.into_iter().filter(|r| !r.build_id.is_empty()) {
        *targets.entry((r.file_name, r.build_id)).or_default().0.entry(r.status.as_str()).or_default() += 1;
    }
    if csv {
        let lines = targets
            .iter()
            .flat_map(|((f, b), c)| {
                c.0.iter().map(move |(s, n)| vec![f.clone(), b.clone(), s.to_string(), n.to_string()])
            })
            .collect();
        return Ok(csv_response("compliance-targets", "file_name,build_id,status,machines", lines));
    }
    let list: Vec<_> =
        targets.into_iter().map(|((f, b), c)| json!({ "file_name": f, "build_id": b, "machines": c })).collect();
    Ok(Json(json!({ "targets": list })).into_response())
}

#[derive(Debug, Serialize)]
pub struct CveRow {
    pub cve: String,
    pub fixed: i64,
    pub open: i64,
    pub machines: Vec<(String, String, String)>,
}

pub async fn cve_rows(st: &AppState, org_id: &str) -> ApiResult<Vec<CveRow>> {
    Ok(cves_of(&rows(st, org_id).await?))
}

/// The CVE view of compliance rows already computed.
pub fn cves_of(rows: &[ComplianceRow]) -> Vec<CveRow> {
    let mut cves: BTreeMap<String, CveRow> = BTreeMap::new();
    for r in rows {
        for (c, fixed) in r.cves_fixed.iter().map(|c| (c, true)).chain(r.cves_open.iter().map(|c| (c, false))) {
            let e =
                cves.entry(c.clone()).or_insert_with(|| CveRow { cve: c.clone(), fixed: 0, open: 0, machines: vec![] });
            let state = if fixed { "fixed".to_string() } else { r.status.as_str().to_string() };
            if fixed {
                e.fixed += 1
            } else {
                e.open += 1
            }
            e.machines.push((r.hostname.clone(), r.file_name.clone(), state));
        }
    }
    cves.into_values().collect()
}

pub async fn by_cve(State(st): State<AppState>, user: User, Query(f): Query<Format>) -> ApiResult<Response> {
    let csv = wants_csv(&f)?;
    let list = cve_rows(&st, &user.org_id).await?;
    if csv {
        let lines = list
            .iter()
            .flat_map(|c| {
                c.machines.iter().map(move |(h, file, s)| vec![c.cve.clone(), h.clone(), file.clone(), s.clone()])
            })
            .collect();
        return Ok(csv_response("compliance-cves", "cve,hostname,file_name,state", lines));
    }
    let json: Vec<_> = list
        .iter()
        .map(|c| json!({ "cve": c.cve, "fixed": c.fixed, "open": c.open,
            "machines": c.machines.iter().map(|(h, f, s)| json!({ "hostname": h, "file_name": f, "state": s })).collect::<Vec<_>>() }))
        .collect();
    Ok(Json(json!({ "cves": json })).into_response())
}

/// The fleet overview: machines by their worst state.
#[derive(Debug, Default, Serialize)]
pub struct Overview {
    pub machines: i64,
    pub up_to_date: i64,
    pub hotpatched: i64,
    pub pending: i64,
    pub restart_pending: i64,
    pub failing: i64,
    pub unknown: i64,
}

pub fn overview(rows: &[ComplianceRow]) -> Overview {
    let mut worst: BTreeMap<&str, (Status, bool)> = BTreeMap::new();
    for r in rows {
        let e = worst.entry(r.machine_id.as_str()).or_insert((r.status, false));
        e.0 = e.0.max(r.status);
        e.1 |= r.applied_level > 0;
    }
    let mut o = Overview { machines: worst.len() as i64, ..Overview::default() };
    for (status, hot) in worst.values() {
        match status {
            Status::NothingToApply | Status::NotCovered | Status::Applied if *hot => o.hotpatched += 1,
            Status::NothingToApply | Status::NotCovered | Status::Applied => o.up_to_date += 1,
            Status::Pending => o.pending += 1,
            Status::NeedsRestart => o.restart_pending += 1,
            Status::CheckFailed | Status::ApplyFailed => o.failing += 1,
            Status::Unknown => o.unknown += 1,
        }
    }
    o
}

pub async fn get_overview(State(st): State<AppState>, user: User) -> ApiResult<Json<Overview>> {
    Ok(Json(overview(&rows(&st, &user.org_id).await?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_defused() {
        for cell in ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "＝1+1", "＋1", "－1", "＠x"] {
            let out = csv_field(cell);
            assert!(out.trim_start_matches('"').starts_with('\''), "{cell:?} -> {out:?}");
        }
        assert_eq!(csv_field("web-1"), "web-1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("\r=1"), "\"'\r=1\"");
    }
}
