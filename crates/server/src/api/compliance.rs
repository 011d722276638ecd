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

// Re-exported for pages that still reach the rules here (web/work_sql.rs).
use crate::auth::User;
pub use crate::domain::compliance::{ComplianceRow, Judge, STALE_SECONDS, Status, cves_of, rows, rows_for};
use crate::domain::compliance::{Overview, cve_rows, overview};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

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
    // A machine whose publisher catalog went stale is not known to be current,
    // whatever its rows say.
    let stale = crate::domain::signed_documents::stale_machines(&st, &user.org_id).await?;
    let rows = crate::domain::holds::annotate(&st, &user.org_id, &rows).await?;
    Ok(Json(json!({ "rows": rows, "stale_catalogs": stale })).into_response())
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
