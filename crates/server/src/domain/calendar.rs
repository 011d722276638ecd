//! An organisation's release calendar: its planned cadence, and a year of it with
//! the registered unplanned baselines each replacing the hotpatch month it falls in.

use hotpatch_release::{CalendarConfig, MonthKind, ReleaseCalendar, YearMonth};
use serde_json::{Value, json};
use sqlx::Row;

use super::catalog::baselines;
use super::coverage::date_of;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The organisation's planned cadence (the default until an admin sets one).
/// Unplanned baselines are not part of it: they come from registered baselines.
pub async fn org_calendar(st: &AppState, org_id: &str) -> ApiResult<ReleaseCalendar> {
    let row =
        sqlx::query("SELECT config FROM calendars WHERE org_id = $1").bind(org_id).fetch_optional(&st.db.pool).await?;
    let Some(row) = row else { return Ok(ReleaseCalendar::default()) };
    let config: CalendarConfig = serde_json::from_str(&row.try_get::<String, _>(0)?)?;
    ReleaseCalendar::new(config).map_err(|e| ApiError::Internal(format!("stored calendar is invalid: {e}")))
}

/// The organisation's calendar of one year: its cadence, and each month's kind
/// with the reason, release date and the baselines registered in it.
pub async fn calendar_year(st: &AppState, org_id: &str, year: i16) -> ApiResult<Value> {
    if !(2000..=2200).contains(&year) {
        return Err(ApiError::BadRequest(format!("year {year} must be 2000-2200")));
    }
    let registered = baselines(st, org_id).await?;
    let mut calendar = org_calendar(st, org_id).await?;
    let config = serde_json::to_value(calendar.config())?;
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
    Ok(json!({ "year": year, "config": config, "months": months }))
}
