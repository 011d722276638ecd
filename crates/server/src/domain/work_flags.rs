//! Each machine's kinds of work, stored as a bit set in `machines.work`, so that
//! the overview's counts, the list's state filters and "needs action first" read
//! one indexed column instead of judging every target of every machine.
//!
//! The bits are what `compliance::rows_for` decides for a machine seen lately
//! (`Judge::status` per target, after the check error and failed deployments);
//! whether the machine was seen lately stays a comparison on `last_seen` at read
//! time (`work_sql`), because it changes with the clock, not with an event.
//!
//! Kept current by events: a check-in that changed the machine's targets or
//! reported results recomputes that machine ([`machine_changed`]); a catalog,
//! calendar or deployment change recomputes the organisation ([`org_changed`]).
//! What changes with the clock alone (a baseline whose release time passes, a
//! new day for the release model's dates, the subscription's entitlement) is
//! caught at read time: `org_work` keeps until when the organisation's bits hold
//! and with which entitlement, and [`ensure_current`] recomputes past that.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use crate::db::Backend;
use crate::domain::compliance::{Judge, Status};
use crate::error::ApiResult;
use crate::state::AppState;

/// A hotpatch is pending on some target.
pub const PENDING: i64 = 1;
/// Some target needs a restart (a baseline is due).
pub const RESTART: i64 = 2;
/// Some target failed: the agent could not check it, or a hotpatch deployment
/// above its level failed on it.
pub const FAILED: i64 = 4;
/// Some target runs a build the catalog does not cover.
pub const UNCOVERED: i64 = 8;
/// Some target has a hotpatch applied.
pub const HOTPATCHED: i64 = 16;
/// The bits that mean work to do (a machine with none of them is up to date).
pub const NEEDS_WORK: i64 = PENDING | RESTART | FAILED | UNCOVERED;

/// Rows per UPDATE when writing many machines' bits.
const CHUNK: usize = 500;

/// The organisation's failed hotpatch deployments as (machine, build, highest
/// level failed): few rows, grouped once and joined to the targets.
const FAILED_LEVELS: &str = "SELECT r.machine_id AS machine_id, h.build_id AS build_id, MAX(h.level) AS level \
     FROM work_results r JOIN deployments d ON d.id = r.deployment_id \
     JOIN hotpatches h ON h.org_id = d.org_id AND h.patch_id = d.patch_id \
     WHERE d.org_id = $1 AND r.status = 'failed' AND d.kind = 'hotpatch' GROUP BY r.machine_id, h.build_id";

/// One reported target with the highest hotpatch level that failed on it.
struct Target {
    build_id: String,
    file_name: String,
    applied: i64,
    error: bool,
    failed_level: Option<i64>,
}

/// `Judge::status` asked once per (build-id, file, level): a fleet runs few builds.
struct Rules<'a> {
    judge: &'a Judge,
    seen: HashMap<(String, String, i64), Status>,
}

impl Rules<'_> {
    fn status(&mut self, t: &Target) -> Status {
        let key = (t.build_id.clone(), t.file_name.clone(), t.applied);
        *self.seen.entry(key).or_insert_with(|| self.judge.status(&t.build_id, &t.file_name, t.applied).0)
    }

    /// The bits of one target, in `compliance::rows_for`'s precedence.
    fn bits(&mut self, t: &Target) -> i64 {
        let hot = if t.applied > 0 { HOTPATCHED } else { 0 };
        if t.error || t.failed_level.is_some_and(|l| l > t.applied) {
            return FAILED | hot;
        }
        hot | match self.status(t) {
            Status::Pending => PENDING,
            Status::NeedsRestart => RESTART,
            Status::NotCovered => UNCOVERED,
            _ => 0,
        }
    }
}

fn target_of(r: &sqlx::any::AnyRow) -> ApiResult<Target> {
    Ok(Target {
        build_id: r.try_get("build_id")?,
        file_name: r.try_get("file_name")?,
        applied: r.try_get("applied_level")?,
        error: r.try_get::<Option<String>, _>("error")?.is_some(),
        failed_level: r.try_get("failed_level")?,
    })
}

/// The targets (of one machine with `$2`, else of the organisation `$1`) with
/// their failed levels.
fn targets_sql(one_machine: bool) -> String {
    let which = if one_machine { "m.id = $2" } else { "m.revoked_at IS NULL" };
    format!(
        "SELECT t.machine_id AS machine_id, t.build_id AS build_id, t.file_name AS file_name, \
         t.applied_level AS applied_level, t.error AS error, fl.level AS failed_level \
         FROM machine_targets t JOIN machines m ON m.id = t.machine_id \
         LEFT JOIN ({FAILED_LEVELS}) fl ON fl.machine_id = t.machine_id AND fl.build_id = t.build_id \
         WHERE m.org_id = $1 AND {which}"
    )
}

/// Recomputes one machine's bits inside the transaction that changed its
/// targets or results (the check-in), so they commit together.
pub async fn machine_changed(
    st: &AppState,
    tx: &mut sqlx::AnyConnection,
    org_id: &str,
    machine_id: &str,
) -> ApiResult<()> {
    let judge = Judge::load(st, org_id, crate::util::now()).await?;
    let mut rules = Rules { judge: &judge, seen: HashMap::new() };
    let rows = sqlx::query(&targets_sql(true)).bind(org_id).bind(machine_id).fetch_all(&mut *tx).await?;
    let mut work = 0;
    for r in &rows {
        work |= rules.bits(&target_of(r)?);
    }
    sqlx::query("UPDATE machines SET work = $1 WHERE id = $2").bind(work).bind(machine_id).execute(&mut *tx).await?;
    Ok(())
}

/// After a change of catalog, calendar or deployments (already committed):
/// recomputes every machine of the organisation. The bits are first marked out
/// of date, so that if the recomputation fails the next read does it; the
/// change itself stands either way, so a failure is logged, not returned.
pub async fn org_changed(st: &AppState, org_id: &str) -> ApiResult<()> {
    sqlx::query("UPDATE org_work SET valid_until = 0 WHERE org_id = $1").bind(org_id).execute(&st.db.writer).await?;
    if let Err(e) = recompute(st, org_id).await {
        tracing::warn!(org = org_id, error = %e, "kinds of work not recomputed; the next read recomputes them");
    }
    Ok(())
}

/// Recomputes every machine of the organisation in one transaction (about 2 s
/// of CPU at 100,000 machines with 250,000 targets).
async fn recompute(st: &AppState, org_id: &str) -> ApiResult<()> {
    let t = crate::util::now();
    let mut tx = st.db.begin().await?;
    lock_org_machines(st, &mut tx, org_id).await?;
    // Loaded after the lock: a check-in that judged with an older catalog has
    // committed by now, and is judged again below.
    let judge = Judge::load(st, org_id, t).await?;
    let entitled = crate::domain::entitlement::entitled(st, org_id, t).await?;
    let work = org_bits(&judge, &mut tx, org_id).await?;
    let changed = changed_bits(&mut tx, org_id, &work).await?;
    write_bits(&mut tx, changed).await?;
    let until = valid_until(&mut tx, org_id, t).await?;
    sqlx::query(
        "INSERT INTO org_work (org_id, computed_at, valid_until, entitled) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (org_id) DO UPDATE SET computed_at = excluded.computed_at, valid_until = excluded.valid_until, \
         entitled = excluded.entitled",
    )
    .bind(org_id)
    .bind(t)
    .bind(until)
    .bind(i64::from(entitled))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::debug!(org = org_id, "machines' kinds of work recomputed");
    Ok(())
}

/// On PostgreSQL, holds the organisation's machine rows so that a check-in on
/// another replica waits for (or is waited for by) this recomputation instead of
/// overwriting it with bits judged from an older catalog. SQLite has one
/// writer connection, which already serialises them.
async fn lock_org_machines(st: &AppState, tx: &mut sqlx::AnyConnection, org_id: &str) -> ApiResult<()> {
    if st.db.backend == Backend::Postgres {
        // In id order, so two recomputations of one organisation do not deadlock.
        sqlx::query("SELECT id FROM machines WHERE org_id = $1 ORDER BY id FOR UPDATE")
            .bind(org_id)
            .fetch_all(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The bits of every machine of the organisation that has targets.
async fn org_bits(judge: &Judge, tx: &mut sqlx::AnyConnection, org_id: &str) -> ApiResult<HashMap<String, i64>> {
    let mut rules = Rules { judge, seen: HashMap::new() };
    let rows = sqlx::query(&targets_sql(false)).bind(org_id).fetch_all(&mut *tx).await?;
    let mut work: HashMap<String, i64> = HashMap::new();
    for r in &rows {
        let bits = rules.bits(&target_of(r)?);
        *work.entry(r.try_get("machine_id")?).or_default() |= bits;
    }
    Ok(work)
}

/// The machines whose stored bits differ from `work` (absent: 0), grouped by
/// their new bits.
async fn changed_bits(
    tx: &mut sqlx::AnyConnection,
    org_id: &str,
    work: &HashMap<String, i64>,
) -> ApiResult<BTreeMap<i64, Vec<String>>> {
    let rows = sqlx::query("SELECT id, work FROM machines WHERE org_id = $1 AND revoked_at IS NULL")
        .bind(org_id)
        .fetch_all(&mut *tx)
        .await?;
    let mut changed: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in rows {
        let (id, stored): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        let now = work.get(&id).copied().unwrap_or(0);
        if now != stored {
            changed.entry(now).or_default().push(id);
        }
    }
    Ok(changed)
}

/// Few distinct bit sets exist, so one UPDATE per set and chunk of machines.
async fn write_bits(tx: &mut sqlx::AnyConnection, changed: BTreeMap<i64, Vec<String>>) -> ApiResult<()> {
    for (bits, ids) in changed {
        for chunk in ids.chunks(CHUNK) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!("UPDATE machines SET work = $1 WHERE id IN ({})", list.join(", "));
            chunk.iter().fold(sqlx::query(&sql).bind(bits), |q, id| q.bind(id)).execute(&mut *tx).await?;
        }
    }
    Ok(())
}

/// Until when the bits computed at `t` hold without an event: the next UTC
/// midnight (the release model compares dates: baselines released "by today",
/// coverage ends) or the next baseline release time (the fallback compares
/// times), whichever comes first.
async fn valid_until(tx: &mut sqlx::AnyConnection, org_id: &str, t: i64) -> ApiResult<i64> {
    let midnight = (crate::util::day_of(t) + 1) * 86_400;
    let next: Option<i64> = sqlx::query("SELECT MIN(released) FROM baselines WHERE org_id = $1 AND released > $2")
        .bind(org_id)
        .bind(t)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    Ok(next.map_or(midnight, |n| n.min(midnight)))
}

/// Makes the organisation's bits current before they are read: recomputed when
/// never computed, when the clock passed their `valid_until`, or when the
/// entitlement changed since. Returns whether the organisation is entitled now.
pub async fn ensure_current(st: &AppState, org_id: &str, t: i64) -> ApiResult<bool> {
    let entitled = crate::domain::entitlement::entitled(st, org_id, t).await?;
    let row = sqlx::query("SELECT valid_until, entitled FROM org_work WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(&st.db.pool)
        .await?;
    let current = match row {
        Some(r) => t < r.try_get::<i64, _>(0)? && (r.try_get::<i64, _>(1)? != 0) == entitled,
        None => false,
    };
    if !current {
        recompute(st, org_id).await?;
    }
    Ok(entitled)
}
