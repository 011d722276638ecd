//! The publishers' signed documents as stored: each publisher's latest
//! catalog metadata, keys documents (rotation) and every revocation
//! statement, passed on to agents in each check-in answer (agents verify
//! them; the server is not trusted for their content); and what machines
//! report of catalogs gone stale.

use hotpatch_format::SignedDocument;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
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

/// The latest catalog metadata of each publisher, by anchor.
pub async fn latest_per_publisher(st: &AppState, org_id: &str) -> ApiResult<Vec<Value>> {
    let rows = sqlx::query(
        "SELECT d.document FROM signed_documents d WHERE d.org_id = $1 AND d.kind = 'catalog' AND d.version = \
         (SELECT MAX(e.version) FROM signed_documents e WHERE e.org_id = d.org_id AND e.kind = 'catalog' AND e.publisher = d.publisher) \
         ORDER BY d.publisher",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    rows.iter().map(|r| stored(&r.try_get::<String, _>(0)?)).collect()
}

/// Every keys document of the organisation, each publisher's in version order.
pub async fn keys_documents(st: &AppState, org_id: &str) -> ApiResult<Vec<SignedDocument>> {
    let rows = sqlx::query(
        "SELECT document FROM signed_documents WHERE org_id = $1 AND kind = 'keys' ORDER BY publisher, version",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let text: String = r.try_get(0)?;
            SignedDocument::parse(text.as_bytes())
                .map_err(|e| ApiError::Internal(format!("stored keys document unreadable: {e}")))
        })
        .collect()
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

/// What an agent reports of a publisher whose newest catalog metadata expired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleCatalog {
    /// The publisher's anchor key id.
    pub publisher: String,
    /// When its newest metadata expired (RFC 3339).
    pub since: String,
}

impl StaleCatalog {
    /// Why the machine is not current, in words.
    pub fn reason(&self) -> String {
        format!(
            "catalog stale since {} (publisher {}): this machine cannot tell whether it misses fixes",
            self.since, self.publisher
        )
    }
}

pub fn validate_stale(list: &[StaleCatalog]) -> ApiResult<()> {
    if list.len() > 64 {
        return Err(ApiError::BadRequest("at most 64 catalogs_stale entries".into()));
    }
    for c in list {
        let id_ok = c.publisher.len() == 2 * hotpatch_format::KEY_ID_LEN
            && c.publisher.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !id_ok {
            return Err(ApiError::BadRequest(format!(
                "catalogs_stale publisher {:?} is not a key id ({} hex digits)",
                c.publisher.chars().take(40).collect::<String>(),
                2 * hotpatch_format::KEY_ID_LEN
            )));
        }
        if c.since.len() > 64 || c.since.parse::<jiff::Timestamp>().is_err() {
            return Err(ApiError::BadRequest(format!(
                "catalogs_stale since {:?} is not an RFC 3339 time",
                c.since.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// Keeps the machine's report of stale catalogs (written only when it changed).
pub async fn record_stale(st: &AppState, machine_id: &str, list: &[StaleCatalog]) -> ApiResult<()> {
    let text = if list.is_empty() { String::new() } else { serde_json::to_string(list)? };
    sqlx::query("UPDATE machines SET catalogs_stale = $1 WHERE id = $2 AND catalogs_stale <> $1")
        .bind(&text)
        .bind(machine_id)
        .execute(&st.db.pool)
        .await?;
    Ok(())
}

fn parse_stale(text: &str) -> Vec<StaleCatalog> {
    if text.is_empty() {
        return Vec::new();
    }
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::error!(error = %e, "stored stale catalogs unreadable");
        Vec::new()
    })
}

/// One machine's stale catalogs as last reported.
pub async fn machine_stale(st: &AppState, org_id: &str, machine_id: &str) -> ApiResult<Vec<StaleCatalog>> {
    let row = sqlx::query("SELECT catalogs_stale FROM machines WHERE org_id = $1 AND id = $2")
        .bind(org_id)
        .bind(machine_id)
        .fetch_optional(&st.db.pool)
        .await?;
    Ok(row.map(|r| r.try_get::<String, _>(0)).transpose()?.map(|t| parse_stale(&t)).unwrap_or_default())
}

/// Every machine of the organisation that reports a stale catalog, with the reason.
pub async fn stale_machines(st: &AppState, org_id: &str) -> ApiResult<Vec<Value>> {
    let rows = sqlx::query(
        "SELECT id, hostname, catalogs_stale FROM machines WHERE org_id = $1 AND revoked_at IS NULL AND catalogs_stale <> '' ORDER BY hostname, id",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let (id, hostname, text): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        for c in parse_stale(&text) {
            out.push(json!({
                "machine_id": id, "hostname": hostname, "publisher": c.publisher, "since": c.since, "reason": c.reason(),
            }));
        }
    }
    Ok(out)
}

/// Adds the organisation's signed documents to a check-in answer.
pub async fn add_to_answer(st: &AppState, org_id: &str, answer: &mut Value) -> ApiResult<()> {
    // `catalog` for agents that know one publisher only; `catalogs` and `keys` for the rest.
    if let Some(m) = latest_metadata(st, org_id).await? {
        answer["catalog"] = m;
    }
    answer["catalogs"] = Value::Array(latest_per_publisher(st, org_id).await?);
    let keys = keys_documents(st, org_id).await?;
    answer["keys"] = serde_json::to_value(keys).map_err(|e| ApiError::Internal(e.to_string()))?;
    answer["revocations"] = Value::Array(revocations(st, org_id).await?);
    Ok(())
}
