//! Publisher keys an organisation trusts: those the server was started with
//! (`--trust`, shared by every organisation, changed only by a restart) plus
//! those an admin added through the API or the web UI, stored per organisation
//! in the database so every replica sees an addition or a revocation at once.
//! A package upload is verified against both.

use hotpatch_format::{KEY_ID_LEN, PublicKey, Publishers, TrustStore};
use serde::Serialize;
use serde_json::json;
use sqlx::Row;

use crate::audit;
use crate::auth::{Role, User};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{now, rfc3339};

#[derive(Debug, Clone, Serialize)]
pub struct TrustedKey {
    pub key_id: String,
    pub label: String,
    /// "server" (from the server's --trust files) or "organisation".
    pub source: &'static str,
    pub added: Option<String>,
    pub added_by: Option<String>,
}

/// The server's own keys (from its start) as a list.
fn server_keys(st: &AppState) -> Vec<PublicKey> {
    st.trust
        .key_ids()
        .filter_map(|hex_id| {
            let bytes: [u8; KEY_ID_LEN] = hex::decode(hex_id).ok()?.try_into().ok()?;
            st.trust.get(&bytes).cloned()
        })
        .collect()
}

/// Everything that verifies a package uploaded to `org_id`, read now: each
/// trusted key is a publisher's anchor, followed along the publisher's keys
/// documents, so a rotated-in key verifies and a retired one does not.
pub async fn store_for(st: &AppState, org_id: &str) -> ApiResult<TrustStore> {
    Ok(publishers_for(st, org_id).await?.trust())
}

/// The organisation's publishers: its anchors with every stored keys document followed.
pub async fn publishers_for(st: &AppState, org_id: &str) -> ApiResult<Publishers> {
    let mut publishers = Publishers::from_anchors(&anchors_for(st, org_id).await?);
    for doc in crate::domain::signed_documents::keys_documents(st, org_id).await? {
        // Stored only after following, so a failure is a publisher anchor
        // revoked since: its chain no longer counts.
        if let Err(e) = publishers.follow(&doc) {
            tracing::warn!(error = %e, "stored keys document not followed");
        }
    }
    Ok(publishers)
}

/// The keys in the trust directory sense: the server's and the organisation's.
async fn anchors_for(st: &AppState, org_id: &str) -> ApiResult<TrustStore> {
    let rows = sqlx::query("SELECT key_id, public_key FROM trusted_keys WHERE org_id = $1 AND revoked_at IS NULL")
        .bind(org_id)
        .fetch_all(&st.db.pool)
        .await?;
    let mut keys = server_keys(st);
    for r in rows {
        let (id, text): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        match PublicKey::parse(&text, &format!("trusted key {id}")) {
            Ok(k) => keys.push(k),
            // Stored only after parsing, so this is damage: skip the key, never trust garbage.
            Err(e) => tracing::error!(key = id, "stored trusted key unreadable, ignored: {e}"),
        }
    }
    Ok(TrustStore::from_keys(keys))
}

pub async fn list(st: &AppState, org_id: &str) -> ApiResult<Vec<TrustedKey>> {
    let mut out: Vec<TrustedKey> = st
        .trust
        .key_ids()
        .map(|key_id| TrustedKey {
            key_id,
            label: "from the server's --trust files".into(),
            source: "server",
            added: None,
            added_by: None,
        })
        .collect();
    let rows = sqlx::query(
        "SELECT key_id, label, added, added_by FROM trusted_keys WHERE org_id = $1 AND revoked_at IS NULL ORDER BY added, key_id",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    for r in rows {
        out.push(TrustedKey {
            key_id: r.try_get(0)?,
            label: r.try_get(1)?,
            source: "organisation",
            added: Some(rfc3339(r.try_get(2)?)),
            added_by: Some(r.try_get(3)?),
        });
    }
    Ok(out)
}

/// Trusts the public key in `text` (as `hotpatch keygen` writes it) for the
/// user's organisation. Returns the key id.
pub async fn add(st: &AppState, user: &User, label: &str, text: &str) -> ApiResult<String> {
    user.require(Role::Admin)?;
    let label = label.trim();
    if label.is_empty() || label.len() > 100 || label.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("label must be 1-100 printable characters".into()));
    }
    let key = PublicKey::parse(text, "the pasted key").map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let key_id = key.id_hex();
    if st.trust.get(&key.id()).is_some() {
        return Err(ApiError::Conflict(format!("key {key_id} is already trusted by the server itself")));
    }
    let mut tx = st.db.begin().await?;
    let existing = sqlx::query("SELECT revoked_at FROM trusted_keys WHERE org_id = $1 AND key_id = $2")
        .bind(&user.org_id)
        .bind(&key_id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = existing {
        if row.try_get::<Option<i64>, _>(0)?.is_none() {
            return Err(ApiError::Conflict(format!("key {key_id} is already trusted")));
        }
        // Trusting a revoked key again is a new decision: a fresh row replaces the old.
        sqlx::query("DELETE FROM trusted_keys WHERE org_id = $1 AND key_id = $2")
            .bind(&user.org_id)
            .bind(&key_id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO trusted_keys (org_id, key_id, public_key, label, added, added_by) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&user.org_id)
    .bind(&key_id)
    .bind(key.to_text().trim())
    .bind(label)
    .bind(now())
    .bind(&user.name)
    .execute(&mut *tx)
    .await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "trusted-key.add", &key_id, json!({ "label": label })).await?;
    tx.commit().await?;
    Ok(key_id)
}

/// Stops trusting a key the organisation added: later uploads signed with it
/// are refused. Hotpatches already in the catalog stay (agents verify each
/// package with their own trusted keys).
pub async fn revoke(st: &AppState, user: &User, key_id: &str) -> ApiResult<()> {
    user.require(Role::Admin)?;
    let mut tx = st.db.begin().await?;
    let done =
        sqlx::query("UPDATE trusted_keys SET revoked_at = $1 WHERE org_id = $2 AND key_id = $3 AND revoked_at IS NULL")
            .bind(now())
            .bind(&user.org_id)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
    if done.rows_affected() != 1 {
        let server = st.trust.key_ids().any(|k| k == key_id);
        return Err(if server {
            ApiError::Conflict(format!("key {key_id} comes from the server's --trust files; remove it there"))
        } else {
            ApiError::NotFound(format!("no trusted key {key_id:?} in this organisation"))
        });
    }
    audit::record(&mut tx, &user.org_id, &user.actor(), "trusted-key.revoke", key_id, json!({})).await?;
    tx.commit().await?;
    Ok(())
}

/// The HTTP API over the functions above: `GET|POST /api/v1/trusted-keys`,
/// `DELETE /api/v1/trusted-keys/{key_id}`.
pub mod api {
    use axum::Json;
    use axum::extract::{Path, State};
    use serde::Deserialize;
    use serde_json::{Value, json};

    use crate::api::json::ApiJson;
    use crate::auth::User;
    use crate::error::ApiResult;
    use crate::state::AppState;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NewKey {
        label: String,
        /// The public key as `hotpatch keygen` writes it (`hotpatch-public-key-v1 <hex>`).
        public_key: String,
    }

    pub async fn list_keys(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
        Ok(Json(json!({ "keys": super::list(&st, &user.org_id).await? })))
    }

    pub async fn add_key(
        State(st): State<AppState>,
        user: User,
        ApiJson(k): ApiJson<NewKey>,
    ) -> ApiResult<Json<Value>> {
        let key_id = super::add(&st, &user, &k.label, &k.public_key).await?;
        Ok(Json(json!({ "key_id": key_id, "label": k.label.trim() })))
    }

    pub async fn revoke_key(State(st): State<AppState>, user: User, Path(id): Path<String>) -> ApiResult<Json<Value>> {
        super::revoke(&st, &user, &id).await?;
        Ok(Json(json!({ "revoked": id })))
    }
}
