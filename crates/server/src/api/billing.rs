//! Billing: one subscription per organisation, a price per core per month
//! (physical and virtual cores alike), a free trial until a date, metering from
//! check-ins as core-days, and monthly invoices prorated by day.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use sqlx::Row;

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
    subscription_in(&st.db, org_id).await
}

async fn subscription_in(db: &crate::db::Db, org_id: &str) -> ApiResult<Subscription> {
    let row = sqlx::query("SELECT active_from, active_until, trial_until, price_cents_per_core_month FROM subscriptions WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(&db.pool)
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

/// A subscription as the API and the operator's command line show it.
pub fn subscription_json(s: &Subscription, entitled: bool) -> Value {
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

/// A change of subscription; fields left `None` stay as they are.
#[derive(Debug, Default)]
pub struct SubscriptionChange {
    /// true subscribes from now on; false ends the subscription now.
    pub active: Option<bool>,
    /// `Some(None)` ends the trial; `Some(Some(rfc3339))` sets its end.
    pub trial_until: Option<Option<String>>,
    pub price_cents_per_core_month: Option<i64>,
}

/// Subscriptions are the service operator's to set, never an organisation's
/// own: an org admin could otherwise entitle itself to hotpatches for free.
pub async fn set_subscription(user: User) -> ApiResult<Json<Value>> {
    Err(ApiError::Forbidden(format!(
        "subscriptions are set by the service operator, not by organisation {:?}: \
         run `hotpatch-server admin subscription --org NAME ...` on the server",
        user.org_id
    )))
}

/// Changes an organisation's subscription (the operator's command line); the
/// change is audited in that organisation's log under `actor`.
pub async fn change_subscription(
    db: &crate::db::Db,
    org_name: &str,
    c: &SubscriptionChange,
    actor: &str,
) -> ApiResult<(Subscription, bool)> {
    let t = now();
    let org_id: String = sqlx::query("SELECT id FROM orgs WHERE name = $1")
        .bind(org_name)
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no organisation named {org_name:?}")))?
        .try_get(0)?;
    let mut s = subscription_in(db, &org_id).await?;
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
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO subscriptions (org_id, active_from, active_until, trial_until, price_cents_per_core_month, updated) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (org_id) DO UPDATE SET active_from = excluded.active_from, active_until = excluded.active_until, \
         trial_until = excluded.trial_until, price_cents_per_core_month = excluded.price_cents_per_core_month, updated = excluded.updated",
    )
    .bind(&org_id)
    .bind(s.active_from)
    .bind(s.active_until)
    .bind(s.trial_until)
    .bind(s.price_cents_per_core_month)
    .bind(t)
    .execute(&mut *tx)
    .await?;
    audit::record(&mut tx, &org_id, actor, "subscription.change", "subscription", json!({
        "active": c.active, "trial_until": s.trial_until.map(rfc3339), "price_cents_per_core_month": s.price_cents_per_core_month,
    }))
    .await?;
    tx.commit().await?;
    let entitled = entitled_at(&s, t);
    Ok((s, entitled))
}

/// Whether a subscription or trial entitles to hotpatches at `t`.
pub fn entitled_at(s: &Subscription, t: i64) -> bool {
    let active = s.active_from.is_some_and(|f| f <= t) && s.active_until.is_none_or(|u| t < u);
    active || s.trial_until.is_some_and(|tr| t < tr)
}

/// (first day, number of days) of a "YYYY-MM" month, in days since the epoch.
pub fn month_days(month: &str) -> ApiResult<(i64, i64)> {
    let bad = || ApiError::BadRequest(format!("month {month:?} must be YYYY-MM"));
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    // Digits only: "2026-+9" parses as September but is another key for a stored invoice.
    if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (y, m): (i16, i8) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let first = jiff::civil::Date::new(y, m, 1).map_err(|_| bad())?;
    let start = first.to_zoned(jiff::tz::TimeZone::UTC).map_err(|_| bad())?.timestamp().as_second();
    Ok((day_of(start), i64::from(first.days_in_month())))
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct InvoiceLine {
    pub machine_id: String,
    pub hostname: String,
    pub core_days: i64,
    pub trial_core_days: i64,
    pub amount_cents: i64,
}

/// An invoice: "open" while its month runs (recomputed at each look), then
/// "closed": computed once after the month ends, stored, and from then on
/// returned exactly as issued whatever later changes (price, machines).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Invoice {
    pub month: String,
    pub status: String,
    pub issued: Option<String>,
    pub days_in_month: i64,
    pub price_cents_per_core_month: i64,
    pub core_days: i64,
    pub trial_core_days: i64,
    pub amount_cents: i64,
    pub amount: String,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
}

/// A month closes this long after it ends, so check-ins already under way at
/// midnight (on any replica) are metered before the invoice is fixed.
pub const CLOSE_AFTER_SECONDS: i64 = 3600;

/// The invoice of `month`: the stored one once the month is closed (closing it
/// now if nobody has yet), else the running figures.
pub async fn invoice(st: &AppState, org_id: &str, month: &str) -> ApiResult<Invoice> {
    invoice_of(st, org_id, month, org_created(st, org_id).await?).await
}

async fn org_created(st: &AppState, org_id: &str) -> ApiResult<i64> {
    Ok(sqlx::query("SELECT created FROM orgs WHERE id = $1").bind(org_id).fetch_one(&st.db.pool).await?.try_get(0)?)
}

/// [`invoice`] for an organisation created at `created` (unix seconds).
async fn invoice_of(st: &AppState, org_id: &str, month: &str, created: i64) -> ApiResult<Invoice> {
    let (first, days) = month_days(month)?;
    let t = now();
    let end = (first + days) * 86_400;
    if end <= created {
        return Err(ApiError::NotFound(format!("no invoice for {month}: the organisation was created after it")));
    }
    if t < end + CLOSE_AFTER_SECONDS {
        return compute_invoice(st, org_id, month, "open", None).await;
    }
    if let Some(stored) = stored_invoice(st, org_id, month).await? {
        return Ok(stored);
    }
    let closed = compute_invoice(st, org_id, month, "closed", Some(rfc3339(t))).await?;
    let mut tx = st.db.begin().await?;
    // Two replicas may close the same month at once: the first insert wins and
    // both return what is stored.
    let inserted = sqlx::query(
        "INSERT INTO invoices (org_id, month, issued, amount_cents, body) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (org_id, month) DO NOTHING",
    )
    .bind(org_id)
    .bind(month)
    .bind(t)
    .bind(closed.amount_cents)
    .bind(serde_json::to_string(&closed)?)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        audit::record(
            &mut tx,
            org_id,
            "system",
            "invoice.close",
            month,
            json!({ "amount_cents": closed.amount_cents }),
        )
        .await?;
    }
    tx.commit().await?;
    stored_invoice(st, org_id, month).await?.ok_or_else(|| ApiError::Internal(format!("invoice {month} vanished")))
}

async fn stored_invoice(st: &AppState, org_id: &str, month: &str) -> ApiResult<Option<Invoice>> {
    let row = sqlx::query("SELECT body FROM invoices WHERE org_id = $1 AND month = $2")
        .bind(org_id)
        .bind(month)
        .fetch_optional(&st.db.pool)
        .await?;
    match row {
        Some(r) => Ok(Some(serde_json::from_str(&r.try_get::<String, _>(0)?)?)),
        None => Ok(None),
    }
}

/// Every month of the organisation's life: closed invoices (closing any not
/// yet closed) and the open one of the current month.
pub async fn invoices(st: &AppState, org_id: &str) -> ApiResult<Vec<Invoice>> {
    let created = org_created(st, org_id).await?;
    let utc = jiff::tz::TimeZone::UTC;
    let to_month = |unix: i64| -> ApiResult<jiff::civil::Date> {
        let ts = jiff::Timestamp::from_second(unix).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(ts.to_zoned(utc.clone()).date().first_of_month())
    };
    let (mut month, last) = (to_month(created)?, to_month(now())?);
    let mut out = Vec::new();
    while month <= last {
        out.push(invoice_of(st, org_id, &month.strftime("%Y-%m").to_string(), created).await?);
        month = month.checked_add(jiff::Span::new().months(1)).map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    out.reverse();
    Ok(out)
}

pub async fn list_invoices(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    user.require(Role::Admin)?;
    let list: Vec<Value> = invoices(&st, &user.org_id)
        .await?
        .into_iter()
        .map(|i| {
            json!({ "month": i.month, "status": i.status, "issued": i.issued, "amount": i.amount,
                    "amount_cents": i.amount_cents, "currency": i.currency, "core_days": i.core_days })
        })
        .collect();
    Ok(Json(json!({ "invoices": list })))
}

/// Billed core-days are the days the subscription was active and the trial
/// over; each costs price / days-in-month. Rounded to the cent once, on the total.
async fn compute_invoice(
    st: &AppState,
    org_id: &str,
    month: &str,
    status: &str,
    issued: Option<String>,
) -> ApiResult<Invoice> {
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
        status: status.to_string(),
        issued,
        days_in_month: days,
        price_cents_per_core_month: price,
        core_days,
        trial_core_days: lines.iter().map(|l| l.trial_core_days).sum(),
        amount_cents,
        amount: format_cents(amount_cents),
        currency: "USD".into(),
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
        for odd in ["2026-+9", "+026-09", "2026- 9", "2026-٠٩"] {
            assert!(month_days(odd).is_err(), "{odd}");
        }
    }
}
