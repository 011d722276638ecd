//! Billing: one subscription per organisation, a price per core per month
//! (physical and virtual cores alike), a free trial until a date, metering from
//! check-ins as core-days, and monthly invoices prorated by day.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use sqlx::Row;

use crate::audit;
use crate::auth::{Role, User};
use crate::domain::entitlement::{Subscription, entitled_at, subscription, subscription_in};
use crate::domain::metering::{Invoice, format_cents, invoice, invoices};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{now, parse_time, rfc3339};

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

pub async fn get_billing(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    let s = subscription(&st, &user.org_id).await?;
    let entitled = crate::domain::entitlement::entitled(&st, &user.org_id, now()).await?;
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

pub async fn get_invoice(
    State(st): State<AppState>,
    user: User,
    Path(month): Path<String>,
) -> ApiResult<Json<Invoice>> {
    user.require(Role::Admin)?;
    Ok(Json(invoice(&st, &user.org_id, &month).await?))
}
