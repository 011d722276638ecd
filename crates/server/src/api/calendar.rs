//! The release calendar of one organisation for a year: the planned baseline
//! months of the quarterly cadence, hotpatch months between them, and the
//! registered baselines, an unplanned one replacing a hotpatch month.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::catalog::baselines;
use crate::auth::User;
use crate::coverage::BASELINE_MONTHS;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Year {
    year: Option<i16>,
}

pub async fn get_calendar(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<Year>,
) -> ApiResult<Json<Value>> {
    let year = q.year.unwrap_or_else(|| jiff::Zoned::now().year());
    if !(2000..=2200).contains(&year) {
        return Err(ApiError::BadRequest(format!(
            "year {year} must be 2000-2200"
        )));
    }
    let registered = baselines(&st, &user.org_id).await?;
    let mut months = Vec::new();
    for month in 1..=12i8 {
        let label = format!("{year}.{month:02}");
        let here: Vec<_> = registered
            .iter()
            .filter(|b| {
                jiff::Timestamp::from_second(b.released)
                    .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC))
                    .is_ok_and(|z| z.year() == year && z.month() == month)
            })
            .collect();
        let planned = BASELINE_MONTHS.contains(&month);
        let unplanned = here.iter().find(|b| !b.planned);
        let (kind, reason) = match (planned, unplanned) {
            (true, _) => ("baseline", "planned baseline (restart)".to_string()),
            (false, Some(b)) => (
                "baseline",
                format!("unplanned baseline {}: {}", b.name, b.reason),
            ),
            (false, None) => ("hotpatch", "hotpatch month (no restart)".to_string()),
        };
        months.push(json!({
            "month": label, "kind": kind, "reason": reason,
            "baselines": here.iter().map(|b| json!({ "name": b.name, "planned": b.planned })).collect::<Vec<_>>(),
        }));
    }
    Ok(Json(json!({ "year": year, "months": months })))
}
