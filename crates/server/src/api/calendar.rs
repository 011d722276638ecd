//! The release calendar of one organisation for a year, from `hotpatch_release`:
//! planned baseline months, hotpatch months between them, and the organisation's
//! registered unplanned baselines, each replacing the hotpatch month it falls in.

use axum::Json;
use axum::extract::{Query, State};
use hotpatch_release::{CalendarConfig, MonthKind, PatchDay, ReleaseCalendar, YearMonth};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::catalog::baselines;
use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
use crate::coverage::date_of;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::now;

/// The organisation's planned cadence (the default until an admin sets one).
/// Unplanned baselines are not part of it: they come from registered baselines.
pub async fn org_calendar(st: &AppState, org_id: &str) -> ApiResult<ReleaseCalendar> {
    let row =
        sqlx::query("SELECT config FROM calendars WHERE org_id = $1").bind(org_id).fetch_optional(&st.db.pool).await?;
    let Some(row) = row else { return Ok(ReleaseCalendar::default()) };
    let config: CalendarConfig = serde_json::from_str(&row.try_get::<String, _>(0)?)?;
    ReleaseCalendar::new(config).map_err(|e| ApiError::Internal(format!("stored calendar is invalid: {e}")))
}

/// What an admin may set: the cadence, the patch day and the grace.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSettings {
    baseline_months: Vec<u8>,
    #[serde(default)]
    patch_day: PatchDay,
    #[serde(default)]
    grace_days: u16,
}

pub async fn set_calendar(
    State(st): State<AppState>,
    user: User,
    ApiJson(body): ApiJson<CalendarSettings>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Admin)?;
    let config = CalendarConfig {
        baseline_months: body.baseline_months,
        unplanned: Vec::new(),
        patch_day: body.patch_day,
        grace_days: body.grace_days,
    };
    let calendar = ReleaseCalendar::new(config).map_err(|e| ApiError::BadRequest(format!("calendar: {e}")))?;
    let text = serde_json::to_string(calendar.config())?;
    let mut tx = st.db.begin().await?;
    sqlx::query(
        "INSERT INTO calendars (org_id, config, updated) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id) DO UPDATE SET config = excluded.config, updated = excluded.updated",
    )
    .bind(&user.org_id)
    .bind(&text)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "calendar.change", "calendar", serde_json::from_str(&text)?)
        .await?;
    tx.commit().await?;
    crate::work_flags::org_changed(&st, &user.org_id).await?;
    Ok(Json(json!({ "config": calendar.config() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Year {
    year: Option<i16>,
}

pub async fn get_calendar(State(st): State<AppState>, user: User, Query(q): Query<Year>) -> ApiResult<Json<Value>> {
    let year = q.year.unwrap_or_else(|| jiff::Zoned::now().year());
    Ok(Json(calendar_year(&st, &user.org_id, year).await?))
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
