//! Creating an organisation with its first admin: used by `hotpatch-server admin
//! create` and by the first start of an empty server. The admin's API token is
//! returned once and stored only as a hash.

use serde_json::json;

use crate::audit;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::util::{hash_secret, new_id, new_secret, now};

pub struct CreatedAdmin {
    pub org_id: String,
    pub user_id: String,
    pub token: String,
}

pub async fn org_count(db: &Db) -> ApiResult<i64> {
    use sqlx::Row;
    let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) FROM orgs").fetch_one(&db.pool).await?;
    Ok(row.try_get(0)?)
}

/// Creates organisation `org` (if it does not exist) and admin user `user` in it.
/// `trial_until` starts the organisation's free trial.
pub async fn create_admin(db: &Db, org: &str, user: &str, trial_until: Option<i64>) -> ApiResult<CreatedAdmin> {
    use sqlx::Row;
    crate::domain::names::check_name("organisation", org)?;
    crate::domain::names::check_name("user", user)?;
    let mut tx = db.begin().await?;
    let existing = sqlx::query("SELECT id FROM orgs WHERE name = $1").bind(org).fetch_optional(&mut *tx).await?;
    let org_id = match existing {
        Some(row) => row.try_get::<String, _>(0)?,
        None => {
            let id = new_id()?;
            sqlx::query("INSERT INTO orgs (id, name, created) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(org)
                .bind(now())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO subscriptions (org_id, active_from, active_until, trial_until, price_cents_per_core_month, updated) \
                 VALUES ($1, NULL, NULL, $2, $3, $4)",
            )
            .bind(&id)
            .bind(trial_until)
            .bind(crate::domain::entitlement::DEFAULT_PRICE_CENTS)
            .bind(now())
            .execute(&mut *tx)
            .await?;
            audit::record(&mut tx, &id, "server-admin", "org.create", org, json!({ "trial_until": trial_until }))
                .await?;
            id
        }
    };
    let taken = sqlx::query("SELECT id FROM users WHERE org_id = $1 AND name = $2")
        .bind(&org_id)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
    if taken.is_some() {
        return Err(ApiError::Conflict(format!("user {user:?} already exists in organisation {org:?}")));
    }
    let user_id = new_id()?;
    sqlx::query("INSERT INTO users (id, org_id, name, role, created) VALUES ($1, $2, $3, 'admin', $4)")
        .bind(&user_id)
        .bind(&org_id)
        .bind(user)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    let token = new_secret("hpu_")?;
    sqlx::query(
        "INSERT INTO api_tokens (id, user_id, token_hash, label, created) VALUES ($1, $2, $3, 'bootstrap', $4)",
    )
    .bind(new_id()?)
    .bind(&user_id)
    .bind(hash_secret(&token))
    .bind(now())
    .execute(&mut *tx)
    .await?;
    audit::record(&mut tx, &org_id, "server-admin", "user.create", user, json!({ "role": "admin" })).await?;
    tx.commit().await?;
    Ok(CreatedAdmin { org_id, user_id, token })
}
