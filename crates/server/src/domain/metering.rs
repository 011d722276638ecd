//! Metering and invoices: check-ins recorded as core-days, billed per month
//! prorated by day; a month's invoice is computed while it runs and stored once
//! it has closed.

use serde_json::json;
use sqlx::Row;

use super::entitlement::subscription;
use crate::audit;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{day_of, now, rfc3339};

pub fn format_cents(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
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
