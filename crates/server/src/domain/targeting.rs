//! Which machines a scope reaches: saved queries (parsed with positioned errors)
//! over the machines' stored facts.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use crate::db::Backend;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::rfc3339;
use hotpatch_query::{self as query, Facts, Query};

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
    /// From a row whose first columns are `id, hostname, os, kernel, arch,
    /// cores, tags`, taking its target file names out of `targets`.
    pub fn from_row(r: &sqlx::any::AnyRow, targets: &mut HashMap<String, Vec<String>>) -> ApiResult<MachineFacts> {
        let id: String = r.try_get(0)?;
        Ok(MachineFacts {
            targets: targets.remove(&id).unwrap_or_default(),
            id,
            hostname: r.try_get(1)?,
            os: r.try_get(2)?,
            kernel: r.try_get(3)?,
            arch: r.try_get(4)?,
            cores: r.try_get(5)?,
            tags: serde_json::from_str(&r.try_get::<String, _>(6)?)?,
        })
    }

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

/// The machines a scope reaches now: every one carrying all `tags`, or
/// those `query` (a saved query's text) matches.
pub async fn reached(
    st: &AppState,
    org_id: &str,
    tags: &[String],
    query: Option<&str>,
) -> ApiResult<Vec<MachineFacts>> {
    let query = query.map(parse_query).transpose()?;
    let with_targets = query.as_ref().is_some_and(|q| q.uses(hotpatch_query::Field::Target));
    let fleet = fleet_facts(st, org_id, with_targets).await?;
    Ok(fleet
        .into_iter()
        .filter(|m| {
            m.with_facts(|facts| match &query {
                Some(q) => q.matches(facts),
                None => tags.iter().all(|t| facts.tags.contains(t)),
            })
        })
        .collect())
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
        out.push(MachineFacts::from_row(&r, &mut targets)?);
    }
    Ok(out)
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

/// Row lock for a saved query read inside a transaction that must not race its
/// deletion (PostgreSQL; SQLite runs one writing transaction at a time anyway).
pub fn lock_clause(backend: Backend, exclusive: bool) -> &'static str {
    match (backend, exclusive) {
        (Backend::Sqlite, _) => "",
        (Backend::Postgres, true) => " FOR UPDATE",
        (Backend::Postgres, false) => " FOR SHARE",
    }
}
