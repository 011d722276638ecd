//! The release calendar of one organisation for a year, from `hotpatch_release`:
//! planned baseline months, hotpatch months between them, and the organisation's
//! registered unplanned baselines, each replacing the hotpatch month it falls in.

use axum::Json;
use axum::extract::{Query, State};
use hotpatch_release::{CalendarConfig, PatchDay, ReleaseCalendar};
use serde::Deserialize;
use serde_json::{Value, json};

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
use crate::domain::calendar::calendar_year;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::now;

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
    crate::domain::work_flags::org_changed(&st, &user.org_id).await?;
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
