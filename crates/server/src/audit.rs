//! The audit log: one row for every change, written in the same transaction as
//! the change so neither exists without the other.

use serde_json::Value;

use crate::error::ApiResult;
use crate::util::{new_id, now};

pub async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    org_id: &str,
    actor: &str,
    action: &str,
    subject: &str,
    detail: Value,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, org_id, at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new_id()?)
    .bind(org_id)
    .bind(now())
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
