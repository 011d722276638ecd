//! What a maintenance window that ended mid-rollout left undone ("window
//! exceeded"): the machines in scope whose ring had started before the window
//! closed, that run the deployment's target still needing its work, and have
//! not reported. New work stops with the window (the check-in offers hotpatches
//! only while it is open); these continue when it opens next.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::rollout::{Deployment, Kind};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::util::rfc3339;

/// At most this many machines are named; the count covers all.
const NAMED: usize = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct LeftMachine {
    pub id: String,
    pub hostname: String,
}

#[derive(Debug, Clone)]
pub struct Exceeded {
    pub window: String,
    pub ended_at: i64,
    pub continues_at: Option<i64>,
    pub count: usize,
    pub machines: Vec<LeftMachine>,
}

impl Exceeded {
    pub fn to_json(&self) -> Value {
        json!({ "window": self.window, "ended_at": rfc3339(self.ended_at),
                "continues_at": self.continues_at.map(rfc3339), "machines_left": self.count,
                "machines": self.machines })
    }
}

/// Machines running the deployment's build that still need its work and have
/// not reported on it.
async fn still_needing(st: &AppState, org_id: &str, d: &Deployment) -> ApiResult<HashSet<String>> {
    let Some(h) = &d.hotpatch else { return Ok(HashSet::new()) };
    let rows = sqlx::query(
        "SELECT t.machine_id, t.applied_level, t.applied_patch_id FROM machine_targets t \
         JOIN machines m ON m.id = t.machine_id \
         LEFT JOIN work_results r ON r.machine_id = t.machine_id AND r.deployment_id = $3 \
         WHERE m.org_id = $1 AND m.revoked_at IS NULL AND t.build_id = $2 AND r.machine_id IS NULL",
    )
    .bind(org_id)
    .bind(&h.build_id)
    .bind(&d.id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut out = HashSet::new();
    for r in rows {
        let (id, level, applied): (String, i64, Option<String>) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let needs = match d.kind {
            Kind::Hotpatch => level < h.level,
            Kind::Rollback => applied.is_some() && applied == d.patch_id,
            Kind::Baseline => false,
        };
        if needs {
            out.insert(id);
        }
    }
    Ok(out)
}

/// The deployment's "window exceeded" state at `now`, if its window closed with work left.
pub async fn left_by_window(st: &AppState, org_id: &str, d: &Deployment, now: i64) -> ApiResult<Option<Exceeded>> {
    let Some((name, w)) = &d.window else { return Ok(None) };
    if d.state != "active" || d.kind == Kind::Baseline || w.is_open(now) {
        return Ok(None);
    }
    let waiting = still_needing(st, org_id, d).await?;
    if waiting.is_empty() {
        return Ok(None);
    }
    let mut left = Vec::new();
    let mut when = None;
    for m in super::targeting::fleet_facts(st, org_id, d.scope_uses_targets()).await? {
        if !waiting.contains(&m.id) || !m.with_facts(|f| d.scope_matches(f)) {
            continue;
        }
        if let Some(w) = d.window_exceeded(&m.id, now) {
            when = Some(w);
            left.push(LeftMachine { id: m.id, hostname: m.hostname });
        }
    }
    let Some((ended_at, continues_at)) = when else { return Ok(None) };
    let count = left.len();
    left.truncate(NAMED);
    Ok(Some(Exceeded { window: name.clone(), ended_at, continues_at, count, machines: left }))
}
