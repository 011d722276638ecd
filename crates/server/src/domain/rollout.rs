//! Deployments as the rules see them: their kind, scope (tags or a saved
//! query), rings (canary share by hash, soak time), window, and each ring's
//! progress; loaded with everything a check-in needs in one query.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::targeting::fleet_facts;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{now, sha256_hex};
use crate::windows::{Window, parse_day};
use hotpatch_query::{self as query, Facts, Field, Query};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Hotpatch,
    Baseline,
    Rollback,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hotpatch => "hotpatch",
            Kind::Baseline => "baseline",
            Kind::Rollback => "rollback",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "hotpatch" => Some(Kind::Hotpatch),
            "baseline" => Some(Kind::Baseline),
            "rollback" => Some(Kind::Rollback),
            _ => None,
        }
    }
}

pub fn window_from_columns(days: &str, start_minute: i64, duration_minutes: i64, time_zone: String) -> Window {
    Window { days: days.split(',').filter_map(parse_day).collect(), start_minute, duration_minutes, time_zone }
}

/// Ring membership is a pure function of deployment and machine, so every
/// replica puts a machine in the same ring without sharing memory.
/// Below this many machines in scope, a deployment whose rings the operator
/// left to the server goes to every machine at once: a canary ring of one
/// machine and an hour's soak only make a small fleet wait.
pub const SMALL_FLEET: usize = 10;
/// The rings the server chooses otherwise: 10% first, the rest an hour later.
pub const DEFAULT_CANARY_PERCENT: i64 = 10;
pub const DEFAULT_SOAK_SECONDS: i64 = 3600;

/// The canary share and soak for `reached` machines in scope when the
/// operator gave neither, and the note that says why where it is not the default.
pub fn default_rings(reached: usize) -> (i64, i64, Option<String>) {
    if reached < SMALL_FLEET {
        let note = format!(
            "small fleet: {reached} machine(s) in scope when created (below {SMALL_FLEET}), so all at once without a canary soak"
        );
        (100, 0, Some(note))
    } else {
        (DEFAULT_CANARY_PERCENT, DEFAULT_SOAK_SECONDS, None)
    }
}

pub fn in_canary(deployment_id: &str, machine_id: &str, canary_percent: i64) -> bool {
    let h = sha256_hex(format!("{deployment_id}/{machine_id}").as_bytes());
    let bucket = u64::from_str_radix(&h[..8], 16).unwrap_or(0) % 100;
    (bucket as i64) < canary_percent
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    pub name: String,
    pub kind: Kind,
    pub patch_id: Option<String>,
    pub baseline_id: Option<String>,
    /// Scope by tags (all must be on the machine); ignored when `query` is set.
    pub tags: Vec<String>,
    /// Scope by a saved query.
    pub query: Option<ScopeQuery>,
    pub start_at: i64,
    pub window: Option<(String, Window)>,
    pub canary_percent: i64,
    pub soak_seconds: i64,
    pub failure_threshold_percent: i64,
    /// Why the rings are what they are, when the server chose them.
    pub rings_note: Option<String>,
    pub reboot_policy: String,
    pub state: String,
    pub state_reason: String,
    /// For hotpatch and rollback deployments: the catalog entry.
    pub hotpatch: Option<HotpatchRef>,
    /// The result the machine asked about (see [`deployments_for`]) reported, if any.
    pub machine_result: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HotpatchRef {
    pub build_id: String,
    pub file_name: String,
    pub level: i64,
    pub artifact_sha256: String,
}

/// A deployment's saved query, as loaded with the deployment (one JOIN) and parsed once.
#[derive(Debug, Clone)]
pub struct ScopeQuery {
    pub id: String,
    /// None once the query was deleted (only cancelled deployments can be left so).
    pub name: Option<String>,
    pub text: Option<String>,
    /// None when deleted or unreadable: the deployment then reaches no machine.
    pub parsed: Option<Arc<Query>>,
}

impl Deployment {
    /// Whether the machine with these facts is in the deployment's scope.
    pub fn scope_matches(&self, facts: &Facts<'_>) -> bool {
        match &self.query {
            Some(q) => q.parsed.as_ref().is_some_and(|p| p.matches(facts)),
            None => self.tags.iter().all(|t| facts.tags.contains(t)),
        }
    }

    /// Whether deciding the scope needs the machines' target file names.
    pub fn scope_uses_targets(&self) -> bool {
        self.query.as_ref().and_then(|q| q.parsed.as_ref()).is_some_and(|p| p.uses(Field::Target))
    }

    /// The scope in words, for the web UI.
    pub fn scope_label(&self) -> String {
        match &self.query {
            Some(ScopeQuery { name: Some(name), .. }) => format!("query {name}"),
            Some(ScopeQuery { name: None, .. }) => "query (deleted)".into(),
            None if self.tags.is_empty() => "all machines".into(),
            None => format!("tags {}", self.tags.join(", ")),
        }
    }

    /// When the ring of this machine starts.
    pub fn ring_start(&self, machine_id: &str) -> i64 {
        if in_canary(&self.id, machine_id, self.canary_percent) {
            self.start_at
        } else {
            self.start_at + self.soak_seconds
        }
    }

    /// Whether the ring of this machine has started at `now`.
    pub fn ring_started(&self, machine_id: &str, now: i64) -> bool {
        now >= self.start_at && now >= self.ring_start(machine_id)
    }

    /// "Window exceeded" for a machine that has not reported: the deployment's
    /// window closed after this machine's ring had started, so its work was left
    /// for the next opening. Returns when the window ended and when it opens next.
    /// Derived from the clock and the window each time (nothing to store or to
    /// clear): when the window opens again the work simply continues.
    pub fn window_exceeded(&self, machine_id: &str, now: i64) -> Option<(i64, Option<i64>)> {
        let (_, w) = self.window.as_ref()?;
        if self.state != "active" || self.kind == Kind::Baseline || w.is_open(now) {
            return None;
        }
        let (_, ended) = w.previous(now)?;
        (self.start_at < ended && self.ring_start(machine_id) < ended)
            .then(|| (ended, w.current_or_next(now).map(|(start, _)| start)))
    }
}

pub async fn deployments(st: &AppState, org_id: &str, only_active: bool) -> ApiResult<Vec<Deployment>> {
    deployments_for(st, org_id, only_active, None).await
}

/// Deployments with their window, catalog entry and saved query (parsed once per
/// distinct query), and, when `machine_id` is given, that machine's result for
/// each: everything a check-in needs in one query.
pub async fn deployments_for(
    st: &AppState,
    org_id: &str,
    only_active: bool,
    machine_id: Option<&str>,
) -> ApiResult<Vec<Deployment>> {
    let sql = format!(
        "SELECT d.id, d.name, d.kind, d.patch_id, d.baseline_id, d.scope_tags, d.start_at, d.canary_percent, d.soak_seconds, \
         d.failure_threshold_percent, d.reboot_policy, d.state, d.state_reason, w.name, w.days, w.start_minute, w.duration_minutes, w.time_zone, \
         h.build_id, h.file_name, h.level, h.artifact_sha256, r.status, d.scope_query_id, q.name, q.query, d.rings_note \
         FROM deployments d LEFT JOIN maintenance_windows w ON w.id = d.window_id \
         LEFT JOIN hotpatches h ON h.org_id = d.org_id AND h.patch_id = d.patch_id \
         LEFT JOIN work_results r ON r.deployment_id = d.id AND r.machine_id = $2 \
         LEFT JOIN saved_queries q ON q.id = d.scope_query_id AND q.org_id = d.org_id \
         WHERE d.org_id = $1 {} ORDER BY d.created DESC, d.id",
        if only_active { "AND d.state = 'active'" } else { "" }
    );
    let rows = sqlx::query(&sql).bind(org_id).bind(machine_id.unwrap_or("")).fetch_all(&st.db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut parsed: HashMap<String, Option<Arc<Query>>> = HashMap::new();
    for r in rows {
        let query = match r.try_get::<Option<String>, _>(23)? {
            None => None,
            Some(id) => {
                let (name, text): (Option<String>, Option<String>) = (r.try_get(24)?, r.try_get(25)?);
                let parsed = parsed
                    .entry(id.clone())
                    .or_insert_with(|| {
                        let text = text.as_deref()?;
                        query::parse(text)
                            .inspect_err(|e| {
                                tracing::warn!(query = id, "stored query unreadable, matches nothing: {e}")
                            })
                            .ok()
                            .map(Arc::new)
                    })
                    .clone();
                Some(ScopeQuery { id, name, text, parsed })
            }
        };
        let window = match r.try_get::<Option<String>, _>(13)? {
            None => None,
            Some(name) => Some((
                name,
                window_from_columns(&r.try_get::<String, _>(14)?, r.try_get(15)?, r.try_get(16)?, r.try_get(17)?),
            )),
        };
        let hotpatch = match r.try_get::<Option<String>, _>(18)? {
            None => None,
            Some(build_id) => Some(HotpatchRef {
                build_id,
                file_name: r.try_get(19)?,
                level: r.try_get(20)?,
                artifact_sha256: r.try_get(21)?,
            }),
        };
        out.push(Deployment {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            kind: Kind::parse(&r.try_get::<String, _>(2)?)
                .ok_or_else(|| ApiError::Internal("stored deployment kind unknown".into()))?,
            patch_id: r.try_get(3)?,
            baseline_id: r.try_get(4)?,
            tags: serde_json::from_str(&r.try_get::<String, _>(5)?)?,
            query,
            start_at: r.try_get(6)?,
            canary_percent: r.try_get(7)?,
            soak_seconds: r.try_get(8)?,
            failure_threshold_percent: r.try_get(9)?,
            rings_note: r.try_get(26)?,
            reboot_policy: r.try_get(10)?,
            state: r.try_get(11)?,
            state_reason: r.try_get(12)?,
            window,
            hotpatch,
            machine_result: r.try_get(22)?,
        });
    }
    Ok(out)
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RingProgress {
    pub machines: i64,
    pub applied: i64,
    pub failed: i64,
    pub started: bool,
}

/// Per ring: how many machines are in scope and what they reported.
pub async fn progress(st: &AppState, org_id: &str, d: &Deployment) -> ApiResult<(RingProgress, RingProgress)> {
    let machines = fleet_facts(st, org_id, d.scope_uses_targets()).await?;
    let results = sqlx::query("SELECT ring, status FROM work_results WHERE deployment_id = $1")
        .bind(&d.id)
        .fetch_all(&st.db.pool)
        .await?;
    let (mut canary, mut rest) = (RingProgress::default(), RingProgress::default());
    for m in machines {
        if !m.with_facts(|f| d.scope_matches(f)) {
            continue;
        }
        if in_canary(&d.id, &m.id, d.canary_percent) {
            canary.machines += 1;
        } else {
            rest.machines += 1;
        }
    }
    for r in results {
        let ring = if r.try_get::<String, _>(0)? == "canary" { &mut canary } else { &mut rest };
        match r.try_get::<String, _>(1)?.as_str() {
            "failed" => ring.failed += 1,
            _ => ring.applied += 1,
        }
    }
    let t = now();
    canary.started = t >= d.start_at;
    rest.started = t >= d.start_at + d.soak_seconds;
    Ok((canary, rest))
}
