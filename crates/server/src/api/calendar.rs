//! The release calendar of one organisation for a year, from `hotpatch_release`:
//! planned baseline months, hotpatch months between them, and the organisation's
//! registered unplanned baselines, each replacing the hotpatch month it falls in.

use axum::Json;
use axum::extract::{Query, State};
use hotpatch_release::{MonthKind, ReleaseCalendar, YearMonth};
use serde::Deserialize;
use serde_json::{Value, json};

use super::catalog::baselines;
use crate::auth::User;
use crate::coverage::date_of;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Year {
    year: Option<i16>,
}

pub async fn get_calendar(State(st): State<AppState>, user: User, Query(q): Query<Year>) -> ApiResult<Json<Value>> {
    let year = q.year.unwrap_or_else(|| jiff::Zoned::now().year());
    if !(2000..=2200).contains(&year) {
        return Err(ApiError::BadRequest(format!("year {year} must be 2000-2200")));
    }
    let registered = baselines(&st, &user.org_id).await?;
    let mut calendar = ReleaseCalendar::default();
    for b in registered.iter().filter(|b| !b.planned) {
        let Some(month) = date_of(b.released).and_then(YearMonth::of) else {
            continue;
        };
        // A second unplanned baseline in one month changes nothing in the plan.
        if let Ok(c) = calendar.with_unplanned(month, format!("{}: {}", b.name, b.reason)) {
            calendar = c;
        }
    }
    let mut months = Vec::new();
    for m in 1..=12u8 {
        let month = YearMonth::new(year, m).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let here: Vec<_> = registered
            .iter()
            .filter(|b| date_of(b.released).and_then(YearMonth::of) == Some(month))
            .map(|b| json!({ "name": b.name, "planned": b.planned }))
            .collect();
        let (kind, reason) = match calendar.month_kind(month) {
            MonthKind::PlannedBaseline => ("baseline", "planned baseline (restart)".to_string()),
            MonthKind::UnplannedBaseline { reason } => ("baseline", format!("unplanned baseline {reason}")),
            MonthKind::HotpatchMonth => ("hotpatch", "hotpatch month (no restart)".to_string()),
        };
        months.push(json!({
            "month": month.to_string(), "kind": kind, "reason": reason,
            "release_date": calendar.release_date(month).to_string(), "baselines": here,
        }));
    }
    Ok(Json(json!({ "year": year, "months": months })))
}
