//! The kinds of work of every machine as SQL over the bits that `work_flags`
//! keeps in `machines.work`, so the overview, a state filter of the machine list
//! and "needs action first" read one indexed column at any fleet size.
//!
//! The bits are the state of each target on a machine seen lately; "seen
//! lately" is compared here, at read time, with `last_seen`: a machine not heard
//! from is "unknown" and counts in no other kind of work but "hotpatched", as in
//! `compliance::rows_for`. Tests compare both on a seeded fleet.

use sqlx::Row;

use crate::api::compliance::STALE_SECONDS;
use crate::domain::work_flags::{FAILED, HOTPATCHED, NEEDS_WORK, PENDING, RESTART, UNCOVERED};
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

/// `m` was not heard from lately: all its targets are "unknown".
fn stale(t: i64) -> String {
    // A number computed here, never caller text.
    format!("(m.last_seen IS NULL OR m.last_seen < {})", t - STALE_SECONDS)
}

/// Machine `m` was seen lately and has work of kind `bit`.
fn fresh_with(bit: i64, t: i64) -> String {
    format!("(NOT {} AND (m.work & {bit}) <> 0)", stale(t))
}

/// The SQL condition on machine `m` for a `state=` filter; None for no filter.
pub fn condition(state: &str, t: i64, entitled: bool) -> Option<String> {
    Some(match state {
        "pending" => fresh_with(PENDING, t),
        "needs-restart" => fresh_with(RESTART, t),
        "not-covered" => fresh_with(UNCOVERED, t),
        "failed" => fresh_with(FAILED, t),
        "unknown" => stale(t),
        "hotpatched" => format!("(m.work & {HOTPATCHED}) <> 0"),
        "unentitled" => (if entitled { "1 = 0" } else { "1 = 1" }).into(),
        "up-to-date" => format!("(NOT {} AND (m.work & {NEEDS_WORK}) = 0)", stale(t)),
        _ => return None,
    })
}

/// The overview's states, in the order [`counts`] returns them.
pub const COUNTED: [&str; 8] =
    ["pending", "needs-restart", "failed", "unknown", "not-covered", "hotpatched", "up-to-date", "unentitled"];

/// "Needs action first": the order of `compliance::Status` from the worst, a
/// failure of either kind first.
pub fn action_rank(t: i64) -> String {
    format!(
        "CASE WHEN {} THEN 3 WHEN (m.work & {FAILED}) <> 0 THEN 6 WHEN (m.work & {RESTART}) <> 0 THEN 5 \
         WHEN (m.work & {PENDING}) <> 0 THEN 4 WHEN (m.work & {HOTPATCHED}) <> 0 THEN 2 \
         WHEN (m.work & {UNCOVERED}) <> 0 THEN 1 ELSE 0 END",
        stale(t)
    )
}

/// Which of [`COUNTED`] a group of machines with these bits counts in.
fn counted_in(work: i64, stale: bool, entitled: bool) -> [bool; 8] {
    let fresh = |bit: i64| !stale && work & bit != 0;
    [
        fresh(PENDING),
        fresh(RESTART),
        fresh(FAILED),
        stale,
        fresh(UNCOVERED),
        work & HOTPATCHED != 0,
        !stale && work & NEEDS_WORK == 0,
        !entitled,
    ]
}

/// How many machines of the organisation are in each of [`COUNTED`], and in all.
/// Same rules as [`condition`] (the tests check both against one fleet): one
/// grouped read of the `(org_id, revoked_at, work, last_seen)` index.
pub async fn counts(st: &AppState, org_id: &str, t: i64) -> ApiResult<(i64, Vec<i64>)> {
    let entitled = crate::domain::work_flags::ensure_current(st, org_id, t).await?;
    let stale = stale(t);
    let sql = format!(
        "SELECT m.work, CASE WHEN {stale} THEN 1 ELSE 0 END, CAST(COUNT(*) AS BIGINT) FROM machines m \
         WHERE m.org_id = $1 AND m.revoked_at IS NULL GROUP BY m.work, CASE WHEN {stale} THEN 1 ELSE 0 END"
    );
    let rows = sqlx::query(&sql).bind(org_id).fetch_all(&st.db.pool).await?;
    let (mut total, mut out) = (0, vec![0; COUNTED.len()]);
    for r in rows {
        let (work, stale, n): (i64, i64, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        total += n;
        for (slot, on) in out.iter_mut().zip(counted_in(work, stale != 0, entitled)) {
            *slot += if on { n } else { 0 };
        }
    }
    Ok((total, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_not_seen_lately_counts_as_unknown_and_hotpatched_only() {
        let all = PENDING | RESTART | FAILED | UNCOVERED | HOTPATCHED;
        assert_eq!(counted_in(all, true, true), [false, false, false, true, false, true, false, false]);
        assert_eq!(counted_in(all, false, true), [true, true, true, false, true, true, false, false]);
        assert_eq!(counted_in(HOTPATCHED, false, false), [false, false, false, false, false, true, true, true]);
        assert!(counted_in(0, false, true)[6], "no work is up to date");
    }
}
