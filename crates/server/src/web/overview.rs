//! The overview: what needs doing, one count per kind of work (a machine may
//! count in several), each linking to the machine list filtered to exactly
//! those machines. The counts come from the database (`work_sql::counts`).

use axum::extract::State;
use axum::response::Html;
use sqlx::Row;

use super::fleet_pages::SILENT_SECONDS;
use super::session::UiUser;
use super::view::{Page, html};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::util::now;

async fn silent_count(st: &AppState, org_id: &str) -> ApiResult<i64> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM machines WHERE org_id = $1 AND revoked_at IS NULL \
         AND (last_seen IS NULL OR last_seen < $2)",
    )
    .bind(org_id)
    .bind(now() - SILENT_SECONDS)
    .fetch_one(&st.db.pool)
    .await?;
    Ok(row.try_get(0)?)
}

pub async fn overview_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let org = &u.0.org_id;
    let (machines, counts) = super::work_sql::counts(&st, org, now()).await?;
    let n = |state: &str| {
        super::work_sql::COUNTED.iter().position(|s| *s == state).and_then(|i| counts.get(i).copied()).unwrap_or(0)
    };
    let mut page = Page::new();
    page.p("Each count is of machines; one machine may need several kinds of work and then counts in each.");
    let cards = [
        ("machines", "machines", machines, ""),
        ("pending", "hotpatch pending", n("pending"), "state=pending"),
        ("restart-required", "restart required", n("needs-restart"), "state=needs-restart"),
        ("failed", "failed", n("failed"), "state=failed"),
        ("silent", "not checked in for 24 h", silent_count(&st, org).await?, "seen=24h"),
        ("unentitled", "unentitled", n("unentitled"), "state=unentitled"),
        ("not-covered", "not covered", n("not-covered"), "state=not-covered"),
        ("unknown", "state unknown", n("unknown"), "state=unknown"),
        ("hotpatched", "hotpatched", n("hotpatched"), "state=hotpatched"),
        ("up-to-date", "up to date", n("up-to-date"), "state=up-to-date"),
    ];
    page.markup(html! {
        div.cards #overview {
            @for (id, label, count, query) in cards {
                div.card id={ "card-" (id) } { a href={ "/ui/machines?" (query) } { div.n { (count) } (label) } }
            }
        }
    });
    Ok(Html(page.render("Fleet overview", Some((&u.0.name, u.0.role.as_str())))))
}
