//! Billing: one subscription per organisation, a price per core per month
//! (physical and virtual cores alike), a free trial until a date, metering from
//! check-ins as core-days, and monthly invoices prorated by day.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{day_of, now, parse_time, rfc3339};

/// 1.50 USD per core per month.
pub const DEFAULT_PRICE_CENTS: i64 = 150;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Subscription {
    pub active_from: Option<i64>,
    pub active_until: Option<i64>,
    pub trial_until: Option<i64>,
    pub price_cents_per_core_month: i64,
}

impl Subscription {
    fn active_on_day(&self, day: i64) -> bool {
        self.active_from.is_some_and(|f| day_of(f) <= day) && self.active_until.is_none_or(|u| day < day_of(u))
    }

    fn trial_on_day(&self, day: i64) -> bool {
        self.trial_until.is_some_and(|t| day < day_of(t))
    }
}

pub async fn subscription(st: &AppState, org_id: &str) -> ApiResult<Subscription> {
    let row = sqlx::query("SELECT active_from, active_until, trial_until, price_cents_per_core_month FROM subscriptions WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(&st.db.pool)
        .await?;
    Ok(match row {
        Some(r) => Subscription {
            active_from: r.try_get(0)?,
            active_until: r.try_get(1)?,
            trial_until: r.try_get(2)?,
            price_cents_per_core_month: r.try_get(3)?,
        },
        None => Subscription {
            active_from: None,
            active_until: None,
            trial_until: None,
            price_cents_per_core_month: DEFAULT_PRICE_CENTS,
        },
    })
}

fn subscription_json(s: &Subscription, entitled: bool) -> Value {
    json!({
        "active_from": s.active_from.map(rfc3339),
        "active_until": s.active_until.map(rfc3339),
        "trial_until": s.trial_until.map(rfc3339),
        "price_per_core_month": format_cents(s.price_cents_per_core_month),
        "price_cents_per_core_month": s.price_cents_per_core_month,
        "currency": "USD",
        "entitled_to_hotpatches": entitled,
    })
}

pub fn format_cents(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

pub async fn get_billing(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let s = subscription(&st, &user.org_id).await?;
    let entitled = super::checkin::entitled(&st, &user.org_id, now()).await?;
    Ok(Json(subscription_json(&s, entitled)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionChange {
    /// true subscribes from now on; false ends the subscription now.
    active: Option<bool>,
    /// RFC 3339, or null to end the trial.
    #[serde(default, with = "double_option")]
    trial_until: Option<Option<String>>,
    price_cents_per_core_month: Option<i64>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

pub async fn set_subscription(
    State(st): State<AppState>,
    user: User,
    ApiJson(c): ApiJson<SubscriptionChange>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Admin)?;
    let t = now();
    let mut s = subscription(&st, &user.org_id).await?;
    if let Some(price) = c.price_cents_per_core_month {
        if !(0..=1_000_000).contains(&price) {
            return Err(ApiError::BadRequest("price_cents_per_core_month must be 0-1000000".into()));
        }
        s.price_cents_per_core_month = price;
    }
    if let Some(trial) = &c.trial_until {
        s.trial_until = match trial {
            None => None,
            Some(text) => Some(
                parse_time(text)
                    .ok_or_else(|| ApiError::BadRequest(format!("trial_until {text:?} is not an RFC 3339 time")))?,
            ),
        };
    }
    match c.active {
        Some(true) if !(s.active_from.is_some() && s.active_until.is_none()) => {
            s.active_from = Some(t);
            s.active_until = None;
        }
        Some(false) if s.active_from.is_some() && s.active_until.is_none() => s.active_until = Some(t),
        _ => {}
    }
    let mut tx = st.db.begin().await?;
    sqlx::query(
        "INSERT INTO subscriptions (org_id, active_from, active_until, trial_until, price_cents_per_core_month, updated) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (org_id) DO UPDATE SET active_from = excluded.active_from, active_until = excluded.active_until, \
         trial_until = excluded.trial_until, price_cents_per_core_month = excluded.price_cents_per_core_month, updated = excluded.updated",
    )
    .bind(&user.org_id)
    .bind(s.active_from)
    .bind(s.active_until)
    .bind(s.trial_until)
    .bind(s.price_cents_per_core_month)
    .bind(t)
    .execute(&mut *tx)
    .await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "subscription.change", "subscription", json!({
        "active": c.active, "trial_until": s.trial_until.map(rfc3339), "price_cents_per_core_month": s.price_cents_per_core_month,
    }))
    .await?;
    tx.commit().await?;
    let entitled = super::checkin::entitled(&st, &user.org_id, t).await?;
    Ok(Json(subscription_json(&s, entitled)))
}

/// (first day, number of days) of a "YYYY-MM" month, in days since the epoch.
pub fn month_days(month: &str) -> ApiResult<(i64, i64)> {
    let bad = || ApiError::BadRequest(format!("month {month:?} must be YYYY-MM"));
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let (y, m): (i16, i8) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let first = jiff::civil::Date::new(y, m, 1).map_err(|_| bad())?;
    let start = first.to_zoned(jiff::tz::TimeZone::UTC).map_err(|_| bad())?.timestamp().as_second();
    Ok((day_of(start), i64::from(first.days_in_month())))
}

#[derive(Debug, serde::Serialize)]
pub struct InvoiceLine {
    pub machine_id: String,
    pub hostname: String,
    pub core_days: i64,
    pub trial_core_days: i64,
    pub amount_cents: i64,
}

#[derive(Debug, serde::Serialize)]
pub struct Invoice {
    pub month: String,
    pub days_in_month: i64,
    pub price_cents_per_core_month: i64,
    pub core_days: i64,
    pub trial_core_days: i64,
    pub amount_cents: i64,
    pub amount: String,
    pub currency: &'static str,
    pub lines: Vec<InvoiceLine>,
}

/// Billed core-days are the days the subscription was active and the trial
/// over; each costs price / days-in-month. Rounded to the cent once, on the total.
pub async fn invoice(st: &AppState, org_id: &str, month: &str) -> ApiResult<Invoice> {
    let (first, days) = month_days(month)?;
    let s = subscription(st, org_id).await?;
    let rows = sqlx::query(
        "SELECT u.machine_id, m.hostname, u.day, u.cores FROM usage_days u JOIN machines m ON m.id = u.machine_id \
         WHERE u.org_id = $1 AND u.day >= $2 AND u.day < $3 ORDER BY m.hostname, u.machine_id, u.day",
    )
    .bind(org_id)
    .bind(first)
    .bind(first + days)
    .fetch_all(&st.db.pool)
    .await?;
    let mut lines: Vec<InvoiceLine> = Vec::new();
    for r in rows {
        let (machine_id, hostname, day, cores): (String, String, i64, i64) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        if lines.last().is_none_or(|l| l.machine_id != machine_id) {
            lines.push(InvoiceLine { machine_id, hostname, core_days: 0, trial_core_days: 0, amount_cents: 0 });
        }
        let Some(line) = lines.last_mut() else {
            continue;
        };
        if s.trial_on_day(day) {
            line.trial_core_days += cores;
        } else if s.active_on_day(day) {
            line.core_days += cores;
        }
    }
    let price = s.price_cents_per_core_month;
    for l in &mut lines {
        l.amount_cents = (l.core_days * price + days / 2) / days;
    }
    let core_days: i64 = lines.iter().map(|l| l.core_days).sum();
    let amount_cents = (core_days * price + days / 2) / days;
    Ok(Invoice {
        month: month.to_string(),
        days_in_month: days,
        price_cents_per_core_month: price,
        core_days,
        trial_core_days: lines.iter().map(|l| l.trial_core_days).sum(),
        amount_cents,
        amount: format_cents(amount_cents),
        currency: "USD",
        lines,
    })
}

pub async fn get_invoice(
    State(st): State<AppState>,
    user: User,
    Path(month): Path<String>,
) -> ApiResult<Json<Invoice>> {
    user.require(Role::Admin)?;
    Ok(Json(invoice(&st, &user.org_id, &month).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        let (first, days) = month_days("2027-02").unwrap_or((0, 0));
        assert_eq!(days, 28);
        assert_eq!(first, day_of(crate::util::parse_time("2027-02-01T00:00:00Z").unwrap_or(0)));
        assert!(month_days("2027-13").is_err());
        assert!(month_days("27-01").is_err());
    }
}
