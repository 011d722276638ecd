//! The publisher's signed documents, stored and passed on to agents in each
//! check-in answer: the latest catalog metadata (`PUT /api/v1/catalog/metadata`)
//! and revocation statements (`POST /api/v1/catalog/revocations`), and each
//! publisher's keys documents (`POST /api/v1/catalog/keys`, key rotation). The server
//! is not trusted for their content: agents verify them with their own keys.
//! It refuses what cannot help an agent (malformed, a version not above the
//! stored one, metadata not signed by a key the organisation trusts), so an
//! operator hears of a mistake at upload rather than from the fleet.
//! Metadata is kept per publisher (named by its anchor key): each publisher's
//! versions grow on their own, and an answer carries each one's latest.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use hotpatch_format::{DocumentKind, Followed, SignedDocument};
use serde_json::{Value, json};
use sqlx::Row;

use crate::audit;
use crate::auth::{Role, User};
use crate::domain::signed_documents::{keys_documents, latest_metadata, revocations};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::now;

/// Catalog metadata as large as the format allows is accepted; one byte more is a 413.
pub const BODY_LIMIT: usize = hotpatch_format::MAX_DOCUMENT_LEN;

/// Revocations passed on per organisation; an agent checks each one.
pub const MAX_REVOCATIONS: i64 = 256;

fn kind_name(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::Catalog => "catalog",
        DocumentKind::Revocation => "revocation",
        DocumentKind::Keys => "keys",
    }
}

fn parse(body: Result<Bytes, BytesRejection>, kind: DocumentKind) -> ApiResult<SignedDocument> {
    let body = body.map_err(|r| match super::json::bytes_rejection(r) {
        ApiError::PayloadTooLarge(_) => ApiError::PayloadTooLarge(format!(
            "a signed {} document may be at most {BODY_LIMIT} bytes (its signed text at most {} bytes)",
            kind_name(kind),
            hotpatch_format::MAX_SIGNED_LEN
        )),
        other => other,
    })?;
    let doc = SignedDocument::parse(&body).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if doc.kind != kind {
        return Err(ApiError::Unprocessable(format!("expected a {} document", kind_name(kind))));
    }
    Ok(doc)
}

pub async fn put_metadata(
    State(st): State<AppState>,
    user: User,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    let doc = parse(body, DocumentKind::Catalog)?;
    let publishers = crate::trust::publishers_for(&st, &user.org_id).await?;
    let v = hotpatch_format::verify_catalog(&doc, &publishers.trust())
        .map_err(|e| ApiError::Unprocessable(format!("catalog metadata rejected: {e}")))?;
    let publisher = publishers.publisher_of(&v.key_id).unwrap_or_default().to_string();
    if v.is_expired(jiff::Timestamp::now()) {
        return Err(ApiError::Unprocessable(format!(
            "catalog metadata rejected: it expired at {}",
            v.metadata.expires
        )));
    }
    let version = i64::try_from(v.metadata.version)
        .map_err(|_| ApiError::Unprocessable("catalog metadata version is too large".into()))?;
    let mut tx = st.db.begin().await?;
    let stored: Option<i64> = sqlx::query(
        "SELECT MAX(version) FROM signed_documents WHERE org_id = $1 AND kind = 'catalog' AND publisher = $2",
    )
    .bind(&user.org_id)
    .bind(&publisher)
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    if let Some(s) = stored.filter(|s| version <= *s) {
        return Err(ApiError::Conflict(format!(
            "catalog metadata version {version} is not above the stored version {s} of publisher {publisher}"
        )));
    }
    insert(&mut tx, &user, &doc, version, &publisher).await?;
    let detail =
        json!({ "version": version, "expires": v.metadata.expires, "key_id": v.key_id, "publisher": publisher });
    audit::record(&mut tx, &user.org_id, &user.actor(), "catalog-metadata.upload", &version.to_string(), detail)
        .await?;
    tx.commit().await?;
    Ok(Json(json!({ "version": version, "expires": v.metadata.expires, "publisher": publisher })))
}

/// A publisher's keys document: followed from the organisation's anchors
/// (signed by a current key of the publisher, its version above the last),
/// stored, and passed on to agents, which follow it the same way.
pub async fn post_keys(
    State(st): State<AppState>,
    user: User,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Admin)?;
    let doc = parse(body, DocumentKind::Keys)?;
    let mut publishers = crate::trust::publishers_for(&st, &user.org_id).await?;
    let followed =
        publishers.follow(&doc).map_err(|e| ApiError::Unprocessable(format!("keys document rejected: {e}")))?;
    let Followed::Rotated { anchor, version, retired } = followed else {
        return Ok(Json(json!({ "created": false })));
    };
    let version =
        i64::try_from(version).map_err(|_| ApiError::Unprocessable("keys document version is too large".into()))?;
    let mut tx = st.db.begin().await?;
    insert(&mut tx, &user, &doc, version, &anchor).await?;
    let detail = json!({ "publisher": anchor, "version": version, "retired": retired, "key_id": doc.key_id });
    audit::record(&mut tx, &user.org_id, &user.actor(), "publisher-keys.rotate", &anchor, detail).await?;
    tx.commit().await?;
    Ok(Json(json!({ "created": true, "publisher": anchor, "version": version, "retired": retired })))
}

pub async fn list_keys(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    user.require(Role::Viewer)?;
    let docs = keys_documents(&st, &user.org_id).await?;
    Ok(Json(json!({ "keys": docs })))
}

pub async fn get_metadata(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    user.require(Role::Viewer)?;
    latest_metadata(&st, &user.org_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no catalog metadata uploaded".into()))
}

pub async fn post_revocation(
    State(st): State<AppState>,
    user: User,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    // Signed by a publisher or by the organisation's operations key, which the
    // server does not hold: agents check the signature, the server the shape.
    let doc = parse(body, DocumentKind::Revocation)?;
    let mut tx = st.db.begin().await?;
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM signed_documents WHERE org_id = $1 AND kind = 'revocation'")
        .bind(&user.org_id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    if count >= MAX_REVOCATIONS {
        return Err(ApiError::Conflict(format!("this organisation already has {MAX_REVOCATIONS} revocations")));
    }
    let sha = doc.sha256();
    let exists =
        sqlx::query("SELECT 1 FROM signed_documents WHERE org_id = $1 AND kind = 'revocation' AND sha256 = $2")
            .bind(&user.org_id)
            .bind(&sha)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        insert(&mut tx, &user, &doc, 0, "").await?;
        audit::record(&mut tx, &user.org_id, &user.actor(), "revocation.upload", &sha, json!({ "key_id": doc.key_id }))
            .await?;
    }
    tx.commit().await?;
    Ok(Json(json!({ "sha256": sha, "created": exists.is_none() })))
}

pub async fn list_revocations(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    user.require(Role::Viewer)?;
    Ok(Json(json!({ "revocations": revocations(&st, &user.org_id).await? })))
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: &User,
    doc: &SignedDocument,
    version: i64,
    publisher: &str,
) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO signed_documents (org_id, kind, sha256, version, document, added, added_by, publisher) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&user.org_id)
    .bind(kind_name(doc.kind))
    .bind(doc.sha256())
    .bind(version)
    .bind(doc.to_json())
    .bind(now())
    .bind(&user.name)
    .bind(publisher)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
