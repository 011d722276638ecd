//! Sections the machine page adds: "Processes", each target's processes (pid,
//! service unit, applied level, state and why), judged by `processes::judge`.

use sqlx::Row;

use super::view::{Page, status, text};
use crate::domain::compliance::ComplianceRow;
use crate::error::ApiResult;
use crate::state::AppState;

/// Adds the section for machine `id`, whose compliance rows are `rows`, to `page`.
pub async fn processes(st: &AppState, id: &str, rows: &[ComplianceRow], page: &mut Page) -> ApiResult<()> {
    let stored = sqlx::query("SELECT build_id, process_list FROM machine_targets WHERE machine_id = $1")
        .bind(id)
        .fetch_all(&st.db.pool)
        .await?;
    let mut table = Vec::new();
    for r in rows.iter().filter(|r| !r.build_id.is_empty()) {
        let Some(s) = stored.iter().find(|s| s.try_get::<String, _>(0).is_ok_and(|b| b == r.build_id)) else {
            continue;
        };
        for p in crate::domain::processes::judge(&crate::domain::processes::from_column(&s.try_get::<String, _>(1)?), r)
        {
            table.push(vec![
                text(&r.file_name),
                text(p.pid),
                text(p.unit.as_deref().unwrap_or("")),
                text(p.applied_level),
                status(&p.state),
                text(&p.reason),
            ]);
        }
    }
    page.h(2, "Processes");
    if table.is_empty() {
        page.p("No process list reported (agents before it report a count per target only).");
    } else {
        page.table("processes", &["file", "pid", "service", "applied level", "state", "why"], &table);
    }
    Ok(())
}
