//! The kinds of work of every machine, decided by the database, so the overview
//! and a state filter of the machine list cost a few queries at any fleet size
//! instead of loading every target of every machine.
//!
//! A target's state depends on the machine (seen lately?), on the target's own
//! report (check error?), on the machine's failed deployments, and otherwise only
//! on (build-id, file name, applied level). So `Judge::status` is asked once per
//! distinct such key, and the keys of each state become a condition in SQL.
//! The precedence is `compliance::rows_for`'s: unknown, check-failed,
//! apply-failed, then the key's state; tests compare both on a seeded fleet.

use sqlx::Row;

use crate::api::compliance::{Judge, STALE_SECONDS, Status};
use crate::error::ApiResult;
use crate::state::AppState;

/// A bound value of the generated SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    Int(i64),
}

/// The SQL being built: its binds follow `$1` (the organisation).
#[derive(Debug, Default, Clone)]
pub struct Binds(pub Vec<Bind>);

impl Binds {
    fn push(&mut self, b: Bind) -> String {
        self.0.push(b);
        format!("${}", self.0.len() + 1)
    }

    pub fn text(&mut self, v: &str) -> String {
        self.push(Bind::Text(v.to_string()))
    }

    pub fn apply<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        self.0.iter().fold(q, |q, b| match b {
            Bind::Text(t) => q.bind(t.clone()),
            Bind::Int(i) => q.bind(*i),
        })
    }
}

type Key = (String, String, i64);

/// The (build-id, file name, applied level) keys whose state is pending,
/// needs-restart and not-covered.
pub struct KeySets {
    pending: Vec<Key>,
    restart: Vec<Key>,
    not_covered: Vec<Key>,
}

impl KeySets {
    pub async fn load(st: &AppState, org_id: &str, judge: &Judge) -> ApiResult<KeySets> {
        let rows = sqlx::query(
            "SELECT DISTINCT t.build_id, t.file_name, t.applied_level FROM machine_targets t \
             JOIN machines m ON m.id = t.machine_id WHERE m.org_id = $1 AND m.revoked_at IS NULL AND t.error IS NULL",
        )
        .bind(org_id)
        .fetch_all(&st.db.pool)
        .await?;
        let mut sets = KeySets { pending: vec![], restart: vec![], not_covered: vec![] };
        for r in rows {
            let key: Key = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            match judge.status(&key.0, &key.1, key.2).0 {
                Status::Pending => sets.pending.push(key),
                Status::NeedsRestart => sets.restart.push(key),
                Status::NotCovered => sets.not_covered.push(key),
                _ => {}
            }
        }
        Ok(sets)
    }
}

/// `m` was not heard from lately: all its targets are "unknown".
fn stale(t: i64) -> String {
    // A number computed here, never caller text.
    format!("(m.last_seen IS NULL OR m.last_seen < {})", t - STALE_SECONDS)
}

/// Target `t` of machine `m` failed a hotpatch deployment above its level.
const FAILED_DEPLOYMENT: &str = "EXISTS (SELECT 1 FROM work_results r JOIN deployments d ON d.id = r.deployment_id \
     JOIN hotpatches h ON h.org_id = d.org_id AND h.patch_id = d.patch_id \
     WHERE r.machine_id = t.machine_id AND r.status = 'failed' AND d.kind = 'hotpatch' \
     AND h.build_id = t.build_id AND h.level > t.applied_level)";

fn key_in(keys: &[Key], b: &mut Binds) -> String {
    if keys.is_empty() {
        return "1 = 0".into();
    }
    let alternatives: Vec<String> = keys
        .iter()
        .map(|(build, file, level)| {
            let (pb, pf, pl) = (b.text(build), b.text(file), b.push(Bind::Int(*level)));
            format!("(t.build_id = {pb} AND t.file_name = {pf} AND t.applied_level = {pl})")
        })
        .collect();
    format!("({})", alternatives.join(" OR "))
}

/// A machine that was seen lately has a target whose own state is among `keys`.
fn has_key(keys: &[Key], t: i64, b: &mut Binds) -> String {
    format!(
        "(NOT {} AND EXISTS (SELECT 1 FROM machine_targets t WHERE t.machine_id = m.id AND t.error IS NULL \
         AND NOT {FAILED_DEPLOYMENT} AND {}))",
        stale(t),
        key_in(keys, b)
    )
}

/// The SQL condition on machine `m` for a `state=` filter; None for no filter.
pub fn condition(state: &str, sets: &KeySets, t: i64, entitled: bool, b: &mut Binds) -> Option<String> {
    let failed = || {
        format!(
            "(NOT {} AND EXISTS (SELECT 1 FROM machine_targets t WHERE t.machine_id = m.id \
             AND (t.error IS NOT NULL OR {FAILED_DEPLOYMENT})))",
            stale(t)
        )
    };
    Some(match state {
        "pending" => has_key(&sets.pending, t, b),
        "needs-restart" => has_key(&sets.restart, t, b),
        "not-covered" => has_key(&sets.not_covered, t, b),
        "failed" => failed(),
        "unknown" => stale(t),
        "hotpatched" => {
            "EXISTS (SELECT 1 FROM machine_targets t WHERE t.machine_id = m.id AND t.applied_level > 0)".into()
        }
        "unentitled" => (if entitled { "1 = 0" } else { "1 = 1" }).into(),
        "up-to-date" => format!(
            "NOT ({} OR {} OR {} OR {} OR {})",
            stale(t),
            failed(),
            has_key(&sets.pending, t, b),
            has_key(&sets.restart, t, b),
            has_key(&sets.not_covered, t, b)
        ),
        _ => return None,
    })
}

/// The overview's states, in the order [`counts`] returns them.
pub const COUNTED: [&str; 8] =
    ["pending", "needs-restart", "failed", "unknown", "not-covered", "hotpatched", "up-to-date", "unentitled"];

/// The organisation's failed hotpatch deployments as (machine, build, highest
/// level failed): few rows, computed once per query and joined to the targets,
/// where [`FAILED_DEPLOYMENT`] would probe three tables for every target (in a
/// pass over every target of every machine that was half the time).
const FAILED_LEVELS: &str = "SELECT r.machine_id AS machine_id, h.build_id AS build_id, MAX(h.level) AS level \
     FROM work_results r JOIN deployments d ON d.id = r.deployment_id \
     JOIN hotpatches h ON h.org_id = d.org_id AND h.patch_id = d.patch_id \
     WHERE d.org_id = $1 AND r.status = 'failed' AND d.kind = 'hotpatch' GROUP BY r.machine_id, h.build_id";

/// [`FAILED_DEPLOYMENT`] over the join with [`FAILED_LEVELS`] (as `fl`).
const FAILED_JOINED: &str = "(COALESCE(fl.level, -1) > t.applied_level)";

/// Each machine's kinds of work as 0/1 columns, in one pass over the targets
/// (a machine with no target still gets its row, through the LEFT JOIN).
pub fn flags_per_machine(sets: &KeySets, t: i64, b: &mut Binds) -> String {
    let ok = format!("t.machine_id IS NOT NULL AND t.error IS NULL AND NOT {FAILED_JOINED}");
    let flag = |cond: String| format!("MAX(CASE WHEN {cond} THEN 1 ELSE 0 END)");
    format!(
        "SELECT m.id AS id, CASE WHEN {} THEN 1 ELSE 0 END AS stale, {} AS failed, {} AS pending, {} AS restart, \
         {} AS uncovered, {} AS hot \
         FROM machines m LEFT JOIN machine_targets t ON t.machine_id = m.id \
         LEFT JOIN ({FAILED_LEVELS}) fl ON fl.machine_id = t.machine_id AND fl.build_id = t.build_id \
         WHERE m.org_id = $1 AND m.revoked_at IS NULL GROUP BY m.id, m.last_seen",
        stale(t),
        flag(format!("t.machine_id IS NOT NULL AND (t.error IS NOT NULL OR {FAILED_JOINED})")),
        flag(format!("{ok} AND {}", key_in(&sets.pending, b))),
        flag(format!("{ok} AND {}", key_in(&sets.restart, b))),
        flag(format!("{ok} AND {}", key_in(&sets.not_covered, b))),
        flag("t.applied_level > 0".into()),
    )
}

/// "Needs action first" over the columns of [`flags_per_machine`] (as `f`):
/// the order of `compliance::Status` from the worst, a failure of either kind first.
pub const ACTION_RANK: &str = "CASE WHEN f.stale = 1 THEN 3 WHEN f.failed = 1 THEN 6 WHEN f.restart = 1 THEN 5 \
     WHEN f.pending = 1 THEN 4 WHEN f.hot = 1 THEN 2 WHEN f.uncovered = 1 THEN 1 ELSE 0 END";

/// How many machines of the organisation are in each of [`COUNTED`], and in all.
/// Same rules as [`condition`] (the tests check both against one fleet).
pub async fn counts(st: &AppState, org_id: &str, t: i64) -> ApiResult<(i64, Vec<i64>)> {
    let judge = Judge::load(st, org_id, t).await?;
    let sets = KeySets::load(st, org_id, &judge).await?;
    let entitled = crate::api::checkin::entitled(st, org_id, t).await?;
    let mut b = Binds::default();
    let fresh = |col: &str| format!("CASE WHEN stale = 0 AND {col} = 1 THEN 1 ELSE 0 END");
    let sums = [
        fresh("pending"),
        fresh("restart"),
        fresh("failed"),
        "stale".to_string(),
        fresh("uncovered"),
        "hot".to_string(),
        "CASE WHEN stale = 0 AND failed = 0 AND pending = 0 AND restart = 0 AND uncovered = 0 THEN 1 ELSE 0 END".into(),
        (if entitled { "0" } else { "1" }).to_string(),
    ];
    let sums: Vec<String> = sums.iter().map(|e| format!("CAST(COALESCE(SUM({e}), 0) AS BIGINT)")).collect();
    let sql = format!(
        "SELECT CAST(COUNT(*) AS BIGINT), {} FROM ({}) x",
        sums.join(", "),
        flags_per_machine(&sets, t, &mut b)
    );
    let row = b.apply(sqlx::query(&sql).bind(org_id)).fetch_one(&st.db.pool).await?;
    let mut out = Vec::with_capacity(COUNTED.len());
    for i in 0..COUNTED.len() {
        out.push(row.try_get(i + 1)?);
    }
    Ok((row.try_get(0)?, out))
}
