//! Monitoring endpoints for the caller's organisation: `/metrics` (Prometheus
//! text format) and a Nagios-style one-line summary. Both need a user's API
//! token (any role: give the scraper a viewer's token). The fleet figures are
//! the organisation's; request latency and check-in counters are this replica's
//! (all organisations together: volumes only, no names).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sqlx::Row;

use crate::auth::User;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::util::now;
use crate::web::fleet_pages::SILENT_SECONDS;
use crate::web::work_sql::{COUNTED, counts};

/// The organisation's fleet figures at one moment.
struct Fleet {
    machines: i64,
    /// As [`COUNTED`].
    states: Vec<i64>,
    silent: i64,
    deployments: Vec<(String, i64)>,
}

impl Fleet {
    async fn load(st: &AppState, org_id: &str) -> ApiResult<Fleet> {
        let t = now();
        let (machines, states) = counts(st, org_id, t).await?;
        let silent: i64 = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM machines WHERE org_id = $1 AND revoked_at IS NULL \
             AND (last_seen IS NULL OR last_seen < $2)",
        )
        .bind(org_id)
        .bind(t - SILENT_SECONDS)
        .fetch_one(&st.db.pool)
        .await?
        .try_get(0)?;
        let mut deployments = Vec::new();
        for r in sqlx::query(
            "SELECT state, CAST(COUNT(*) AS BIGINT) FROM deployments WHERE org_id = $1 GROUP BY state ORDER BY state",
        )
        .bind(org_id)
        .fetch_all(&st.db.pool)
        .await?
        {
            deployments.push((r.try_get(0)?, r.try_get(1)?));
        }
        Ok(Fleet { machines, states, silent, deployments })
    }

    fn state(&self, name: &str) -> i64 {
        COUNTED.iter().position(|s| *s == name).and_then(|i| self.states.get(i).copied()).unwrap_or(0)
    }

    fn deployments_in(&self, state: &str) -> i64 {
        self.deployments.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n)
    }

    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str("# HELP hotpatch_machines Enrolled machines of the organisation; by state, a machine counts in every state it is in.\n");
        out.push_str("# TYPE hotpatch_machines gauge\n");
        let _ = writeln!(out, "hotpatch_machines{{state=\"all\"}} {}", self.machines);
        for (name, n) in COUNTED.iter().zip(&self.states) {
            let _ = writeln!(out, "hotpatch_machines{{state=\"{name}\"}} {n}");
        }
        let _ = writeln!(out, "hotpatch_machines{{state=\"not-seen-24h\"}} {}", self.silent);
        out.push_str("# HELP hotpatch_deployments Deployments of the organisation by state.\n");
        out.push_str("# TYPE hotpatch_deployments gauge\n");
        for state in ["active", "paused", "halted", "cancelled"] {
            let _ = writeln!(out, "hotpatch_deployments{{state=\"{state}\"}} {}", self.deployments_in(state));
        }
    }

    /// "HOTPATCH OK - ..." / WARNING / CRITICAL, with perfdata after "|".
    fn summary(&self) -> String {
        let (pending, restart, failed) = (self.state("pending"), self.state("needs-restart"), self.state("failed"));
        let halted = self.deployments_in("halted");
        let level = if failed > 0 || halted > 0 {
            "CRITICAL"
        } else if pending > 0 || restart > 0 || self.silent > 0 {
            "WARNING"
        } else {
            "OK"
        };
        format!(
            "HOTPATCH {level} - {} machines: {failed} failed, {halted} halted deployments, {pending} hotpatch pending, \
             {restart} restart required, {} not checked in for 24 h | machines={} failed={failed} halted={halted} \
             pending={pending} restart={restart} silent={}\n",
            self.machines, self.silent, self.machines, self.silent
        )
    }
}

pub async fn metrics(State(st): State<AppState>, user: User) -> ApiResult<impl IntoResponse> {
    let fleet = Fleet::load(&st, &user.org_id).await?;
    let mut text = String::new();
    fleet.render(&mut text);
    st.metrics.render(&mut text);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

pub async fn summary(State(st): State<AppState>, user: User) -> ApiResult<impl IntoResponse> {
    let fleet = Fleet::load(&st, &user.org_id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], fleet.summary()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(failed: i64, pending: i64, halted: i64) -> Fleet {
        let mut states = vec![0; COUNTED.len()];
        states[COUNTED.iter().position(|s| *s == "failed").unwrap_or(0)] = failed;
        states[COUNTED.iter().position(|s| *s == "pending").unwrap_or(0)] = pending;
        Fleet { machines: 10, states, silent: 0, deployments: vec![("halted".into(), halted)] }
    }

    #[test]
    fn the_summary_line_says_the_worst_first() {
        assert!(fleet(0, 0, 0).summary().starts_with("HOTPATCH OK - 10 machines"));
        assert!(fleet(0, 3, 0).summary().starts_with("HOTPATCH WARNING - "));
        let line = fleet(1, 3, 1).summary();
        assert!(line.starts_with("HOTPATCH CRITICAL - 10 machines: 1 failed, 1 halted"), "{line}");
        assert!(line.contains("| machines=10 failed=1 halted=1 pending=3"), "{line}");
        assert_eq!(line.lines().count(), 1);
    }
}
