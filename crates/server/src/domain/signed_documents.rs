//! The publisher's signed documents as stored: the latest catalog metadata and
//! every revocation statement, passed on to agents in each check-in answer
//! (agents verify them; the server is not trusted for their content).

use serde_json::Value;
use sqlx::Row;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

fn stored(text: &str) -> ApiResult<Value> {
    serde_json::from_str(text).map_err(|e| ApiError::Internal(format!("stored signed document unreadable: {e}")))
}

/// The highest version of the organisation's catalog metadata, as uploaded.
pub async fn latest_metadata(st: &AppState, org_id: &str) -> ApiResult<Option<Value>> {
    let row = sqlx::query(
        "SELECT document FROM signed_documents WHERE org_id = $1 AND kind = 'catalog' ORDER BY version DESC LIMIT 1",
    )
    .bind(org_id)
    .fetch_optional(&st.db.pool)
    .await?;
    row.map(|r| stored(&r.try_get::<String, _>(0)?)).transpose()
}

/// Every revocation statement of the organisation, oldest first.
pub async fn revocations(st: &AppState, org_id: &str) -> ApiResult<Vec<Value>> {
    let rows = sqlx::query(
        "SELECT document FROM signed_documents WHERE org_id = $1 AND kind = 'revocation' ORDER BY added, sha256",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    rows.iter().map(|r| stored(&r.try_get::<String, _>(0)?)).collect()
}

/// Adds the organisation's signed documents to a check-in answer.
pub async fn add_to_answer(st: &AppState, org_id: &str, answer: &mut Value) -> ApiResult<()> {
    if let Some(m) = latest_metadata(st, org_id).await? {
        answer["catalog"] = m;
    }
    answer["revocations"] = Value::Array(revocations(st, org_id).await?);
    Ok(())
}
