//! Entitlement: whether an organisation's subscription or trial entitles its
//! machines to hotpatches at a given time.

use sqlx::Row;

use crate::error::ApiResult;
use crate::state::AppState;
use crate::util::day_of;

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
    pub fn active_on_day(&self, day: i64) -> bool {
        self.active_from.is_some_and(|f| day_of(f) <= day) && self.active_until.is_none_or(|u| day < day_of(u))
    }

    pub fn trial_on_day(&self, day: i64) -> bool {
        self.trial_until.is_some_and(|t| day < day_of(t))
    }
}

pub async fn subscription(st: &AppState, org_id: &str) -> ApiResult<Subscription> {
    subscription_in(&st.db, org_id).await
}

pub async fn subscription_in(db: &crate::db::Db, org_id: &str) -> ApiResult<Subscription> {
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

/// Whether a subscription or trial entitles to hotpatches at `t`.
pub fn entitled_at(s: &Subscription, t: i64) -> bool {
    let active = s.active_from.is_some_and(|f| f <= t) && s.active_until.is_none_or(|u| t < u);
    active || s.trial_until.is_some_and(|tr| t < tr)
}

pub async fn entitled(st: &AppState, org_id: &str, t: i64) -> ApiResult<bool> {
    let s = subscription(st, org_id).await?;
    Ok(entitled_at(&s, t))
}
