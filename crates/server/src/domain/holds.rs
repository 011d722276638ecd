//! Why a pending hotpatch is not on its way to a machine yet: its tier's delay
//! or missing promotion, or a pin (`tiers::Gate::hold`, the rule the check-in
//! applies), said where compliance is shown: the compliance API's rows and the
//! machine page.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::Row;

use crate::domain::catalog::Hotpatch;
use crate::domain::compliance::{ComplianceRow, Status};
use crate::domain::targeting::MachineFacts;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::tiers::Gate;

/// What the holds of some machines are decided from, read once.
pub struct Holds {
    gate: Gate,
    catalog: Vec<Hotpatch>,
    /// Per machine: its facts (for pins) and the tier it was put in.
    machines: HashMap<String, (MachineFacts, Option<String>)>,
}

impl Holds {
    /// For the machines in `only` (every machine of the organisation when None).
    pub async fn load(st: &AppState, org_id: &str, only: Option<&str>) -> ApiResult<Holds> {
        let gate = Gate::load(st, org_id).await?;
        if gate.tiers.is_empty() && gate.pins.is_empty() {
            // No tier and no pin hold anything: skip reading the fleet.
            return Ok(Holds { gate, catalog: Vec::new(), machines: HashMap::new() });
        }
        let rows = sqlx::query(
            "SELECT m.id, m.hostname, m.os, m.kernel, m.arch, m.cores, m.tags, m.tier FROM machines m \
             WHERE m.org_id = $1 AND m.revoked_at IS NULL AND ($2 = '' OR m.id = $2)",
        )
        .bind(org_id)
        .bind(only.unwrap_or(""))
        .fetch_all(&st.db.pool)
        .await?;
        let files = sqlx::query(
            "SELECT t.machine_id, t.file_name FROM machine_targets t JOIN machines m ON m.id = t.machine_id \
             WHERE m.org_id = $1 AND m.revoked_at IS NULL AND ($2 = '' OR m.id = $2)",
        )
        .bind(org_id)
        .bind(only.unwrap_or(""))
        .fetch_all(&st.db.pool)
        .await?;
        let mut targets: HashMap<String, Vec<String>> = HashMap::new();
        for r in files {
            targets.entry(r.try_get(0)?).or_default().push(r.try_get(1)?);
        }
        let mut machines = HashMap::with_capacity(rows.len());
        for r in rows {
            let facts = MachineFacts::from_row(&r, &mut targets)?;
            machines.insert(facts.id.clone(), (facts, r.try_get(7)?));
        }
        Ok(Holds { gate, catalog: crate::domain::catalog::hotpatches(st, org_id).await?, machines })
    }

    /// Why the row's pending hotpatch (its build's latest level) is held from
    /// the machine at `t`; None when it is not pending or nothing holds it.
    pub fn of(&self, row: &ComplianceRow, t: i64) -> Option<String> {
        if row.status != Status::Pending {
            return None;
        }
        let (facts, tier) = self.machines.get(&row.machine_id)?;
        let patch = self.catalog.iter().find(|h| h.build_id == row.build_id && h.level == row.latest_level)?;
        facts.with_facts(|f| self.gate.hold(tier.as_deref(), f, &patch.patch_id, &row.build_id, patch.level, t))
    }
}

impl Holds {
    /// The row's detail, followed by its hold when one holds it.
    pub fn detail(&self, row: &ComplianceRow, t: i64) -> String {
        match self.of(row, t) {
            Some(hold) => format!("{}; held: {hold}", row.detail),
            None => row.detail.clone(),
        }
    }
}

/// The compliance API's rows, each with `hold` (null when nothing holds it).
pub async fn annotate(st: &AppState, org_id: &str, rows: &[ComplianceRow]) -> ApiResult<Vec<Value>> {
    let holds = Holds::load(st, org_id, None).await?;
    let t = crate::util::now();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut v = serde_json::to_value(r)?;
        v["hold"] = json!(holds.of(r, t));
        out.push(v);
    }
    Ok(out)
}
