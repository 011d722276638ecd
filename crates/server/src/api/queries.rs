//! Saved queries: named filters over machine facts (the language is in
//! [`crate::query`]) that scope deployments. Create, list, show with the machines
//! the query matches now, delete (refused while an active or halted deployment uses it).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;

use super::json::ApiJson;
use crate::audit;
use crate::auth::{Role, User};
use crate::db::Backend;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{new_id, now, rfc3339};
use hotpatch_query::{self as query, Facts, Field, Query};

/// Parses query text from a request: a bad query is the caller's 400, with the position.
pub fn parse_query(text: &str) -> ApiResult<Query> {
    query::parse(text).map_err(|e| ApiError::BadRequest(format!("query: {e}")))
}

/// A machine's facts as stored at its last check-in, owned.
#[derive(Debug, Clone)]
pub struct MachineFacts {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cores: i64,
    pub tags: Vec<String>,
    /// Target file names; loaded only when asked for (see [`fleet_facts`]).
    pub targets: Vec<String>,
}

impl MachineFacts {
    /// Runs `f` with these facts in the form queries and scopes evaluate.
    pub fn with_facts<R>(&self, f: impl FnOnce(&Facts<'_>) -> R) -> R {
        let targets: Vec<&str> = self.targets.iter().map(String::as_str).collect();
        f(&Facts {
            hostname: &self.hostname,
            os: &self.os,
            kernel: &self.kernel,
            arch: &self.arch,
            cores: self.cores,
            tags: &self.tags,
            targets: &targets,
        })
    }
}

/// Every enrolled, unrevoked machine of the organisation with its facts; target
/// file names only when `with_targets` (one more query, skipped when no term reads them).
pub async fn fleet_facts(st: &AppState, org_id: &str, with_targets: bool) -> ApiResult<Vec<MachineFacts>> {
    let rows = sqlx::query(
        "SELECT id, hostname, os, kernel, arch, cores, tags FROM machines WHERE org_id = $1 AND revoked_at IS NULL \
         ORDER BY hostname, id",
    )
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut targets: HashMap<String, Vec<String>> = HashMap::new();
    if with_targets {
        let files = sqlx::query(
            "SELECT t.machine_id, t.file_name FROM machine_targets t JOIN machines m ON m.id = t.machine_id \
             WHERE m.org_id = $1 AND m.revoked_at IS NULL",
        )
        .bind(org_id)
        .fetch_all(&st.db.pool)
        .await?;
        for r in files {
            targets.entry(r.try_get(0)?).or_default().push(r.try_get(1)?);
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get(0)?;
        out.push(MachineFacts {
            targets: targets.remove(&id).unwrap_or_default(),
            id,
            hostname: r.try_get(1)?,
            os: r.try_get(2)?,
            kernel: r.try_get(3)?,
            arch: r.try_get(4)?,
            cores: r.try_get(5)?,
            tags: serde_json::from_str(&r.try_get::<String, _>(6)?)?,
        });
    }
    Ok(out)
}

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
    super::access::check_name("query", &q.name)?;
    parse_query(&q.query)?;
    let mut tx = st.db.begin().await?;
    super::access::ensure_name_free(&mut tx, super::access::Named::SavedQuery, &user.org_id, &q.name).await?;
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

/// One saved query as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SavedQuery {
    pub id: String,
    pub name: String,
    pub query: String,
    pub created: String,
}

pub async fn saved_queries(st: &AppState, org_id: &str) -> ApiResult<Vec<SavedQuery>> {
    let rows = sqlx::query("SELECT id, name, query, created FROM saved_queries WHERE org_id = $1 ORDER BY name")
        .bind(org_id)
        .fetch_all(&st.db.pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(SavedQuery {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            query: r.try_get(2)?,
            created: rfc3339(r.try_get(3)?),
        });
    }
    Ok(out)
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

/// Row lock for a saved query read inside a transaction that must not race its
/// deletion (PostgreSQL; SQLite runs one writing transaction at a time anyway).
pub fn lock_clause(backend: Backend, exclusive: bool) -> &'static str {
    match (backend, exclusive) {
        (Backend::Sqlite, _) => "",
        (Backend::Postgres, true) => " FOR UPDATE",
        (Backend::Postgres, false) => " FOR SHARE",
    }
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
