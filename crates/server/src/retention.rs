//! History retention: each machine's work history (the results it reported,
//! shown on its page and in the API) is kept for a configured number of days
//! (`--history-days`, default 90) and pruned at start and every hour after.
//! The audit log, invoices and metering are records of their own and are kept.
//!
//! Every replica prunes; the deletes are idempotent, so replicas need not agree
//! on who does it.

use std::time::Duration;

use crate::db::Db;

pub const DEFAULT_HISTORY_DAYS: u32 = 90;
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Rows per delete: a long history goes in slices, so no single transaction
/// holds SQLite's one writer (and every check-in behind it) for long.
const SLICE: i64 = 5000;

/// Removes work history older than `keep_days` before `now`; returns how many rows.
pub async fn prune(db: &Db, now: i64, keep_days: u32) -> Result<u64, sqlx::Error> {
    let cutoff = now - i64::from(keep_days) * 86_400;
    let mut removed = 0;
    loop {
        let done =
            sqlx::query("DELETE FROM work_history WHERE id IN (SELECT id FROM work_history WHERE at < $1 LIMIT $2)")
                .bind(cutoff)
                .bind(SLICE)
                .execute(&db.writer)
                .await?
                .rows_affected();
        removed += done;
        if done < SLICE as u64 {
            return Ok(removed);
        }
    }
}

/// Prunes every [`PRUNE_EVERY`] from now on (the start prunes once itself) for
/// as long as the server runs; a failure is logged and retried at the next turn.
pub fn spawn_pruning(db: Db, keep_days: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
        loop {
            tick.tick().await;
            match prune(&db, crate::util::now(), keep_days).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, keep_days, "history pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning history failed; retrying in an hour"),
            }
        }
    })
}
