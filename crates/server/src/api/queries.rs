//! Saved queries: named filters over machine facts (the language is in
//! [`crate::query`]) that scope deployments. Create, list, show with the machines
//! the query matches now, delete (refused while an active or halted deployment uses it).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
use crate::domain::targeting::{fleet_facts, lock_clause, parse_query, saved_queries};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{new_id, now, rfc3339};
use hotpatch_query::{self as query, Field};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewQuery {
    name: String,
    query: String,
}

pub async fn create_query(
    State(st): State<AppState>,
    user: User,
    ApiJson(q): ApiJson<NewQuery>,
) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    crate::domain::names::check_name("query", &q.name)?;
    parse_query(&q.query)?;
    let mut tx = st.db.begin().await?;
    crate::domain::names::ensure_name_free(&mut tx, crate::domain::names::Named::SavedQuery, &user.org_id, &q.name)
        .await?;
    let id = new_id()?;
    sqlx::query("INSERT INTO saved_queries (id, org_id, name, query, created) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(&user.org_id)
        .bind(&q.name)
        .bind(&q.query)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "query.create", &q.name, json!({ "id": id, "query": q.query }))
        .await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id, "name": q.name, "query": q.query })))
}

pub async fn list_queries(State(st): State<AppState>, user: User) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "queries": saved_queries(&st, &user.org_id).await? })))
}

/// The saved query with a preview: the machines it matches now, and the deployments it scopes.
pub async fn get_query(State(st): State<AppState>, user: User, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let r = sqlx::query("SELECT id, query, created FROM saved_queries WHERE org_id = $1 AND name = $2")
        .bind(&user.org_id)
        .bind(&name)
        .fetch_optional(&st.db.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no saved query {name:?} in this organisation")))?;
    let (id, text): (String, String) = (r.try_get(0)?, r.try_get(1)?);
    let parsed = query::parse(&text).map_err(|e| ApiError::Internal(format!("stored query {name:?}: {e}")))?;
    let mut matches = Vec::new();
    for m in fleet_facts(&st, &user.org_id, parsed.uses(Field::Target)).await? {
        if m.with_facts(|f| parsed.matches(f)) {
            matches.push(json!({
                "id": m.id, "hostname": m.hostname, "os": m.os, "kernel": m.kernel, "arch": m.arch,
                "cores": m.cores, "tags": m.tags,
            }));
        }
    }
    let used = sqlx::query(
        "SELECT id, name, state FROM deployments WHERE org_id = $1 AND scope_query_id = $2 ORDER BY created DESC, id",
    )
    .bind(&user.org_id)
    .bind(&id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut deployments = Vec::with_capacity(used.len());
    for d in used {
        deployments.push(json!({
            "id": d.try_get::<String, _>(0)?, "name": d.try_get::<String, _>(1)?, "state": d.try_get::<String, _>(2)?,
        }));
    }
    Ok(Json(json!({
        "id": id, "name": name, "query": text, "canonical": parsed.to_string(),
        "created": rfc3339(r.try_get(2)?),
        "matched": matches.len(), "machines": matches, "deployments": deployments,
    })))
}

pub async fn delete_query(State(st): State<AppState>, user: User, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    user.require(Role::Operator)?;
    let mut tx = st.db.begin().await?;
    // Locked so that a deployment being created with this query either commits
    // first (and is seen below) or finds the query gone.
    let sql =
        format!("SELECT id FROM saved_queries WHERE org_id = $1 AND name = $2{}", lock_clause(st.db.backend, true));
    let row = sqlx::query(&sql)
        .bind(&user.org_id)
        .bind(&name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no saved query {name:?} in this organisation")))?;
    let id: String = row.try_get(0)?;
    let users = sqlx::query(
        "SELECT name FROM deployments WHERE org_id = $1 AND scope_query_id = $2 AND state IN ('active', 'halted') \
         ORDER BY name",
    )
    .bind(&user.org_id)
    .bind(&id)
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        let names = users.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<Vec<_>, _>>()?;
        return Err(ApiError::Conflict(format!(
            "saved query {name:?} scopes active or halted deployments ({}); cancel them first",
            names.join(", ")
        )));
    }
    let pins = sqlx::query("SELECT id FROM pins WHERE org_id = $1 AND query_id = $2 ORDER BY id")
        .bind(&user.org_id)
        .bind(&id)
        .fetch_all(&mut *tx)
        .await?;
    if !pins.is_empty() {
        let ids = pins.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<Vec<_>, _>>()?;
        return Err(ApiError::Conflict(format!(
            "saved query {name:?} scopes pins ({}); remove them first",
            ids.join(", ")
        )));
    }
    sqlx::query("DELETE FROM saved_queries WHERE id = $1").bind(&id).execute(&mut *tx).await?;
    audit::record(&mut tx, &user.org_id, &user.actor(), "query.delete", &name, json!({ "id": id })).await?;
    tx.commit().await?;
    Ok(Json(json!({ "deleted": name })))
}
