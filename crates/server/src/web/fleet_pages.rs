//! The machine list (filter, sort, page) and each machine's kinds of work.
//!
//! The counts, every filter (state included) and every order ("needs action
//! first" included) are SQL over stored columns (see `work_sql`, `work_flags`);
//! the list pages in SQL and then computes the states of that page's machines
//! only, for their words.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::response::Html;
use serde::Deserialize;
use sqlx::Row;

use super::session::UiUser;
use super::view::{Markup, Page, html, link, status, text};
use super::work_sql::{Binds, action_rank, condition};
use crate::domain::compliance::{ComplianceRow, Status, rows_for};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::util::now;

/// "Not checked in" (the overview's count and the list's `seen=24h`): a day without a check-in.
pub const SILENT_SECONDS: i64 = 86_400;
const PER_PAGE: usize = 100;

/// The kinds of work one machine has; any number may be true at once.
#[derive(Debug, Default, Clone)]
pub struct Work {
    pub worst: Option<Status>,
    pub pending: bool,
    pub restart: bool,
    pub failed: bool,
    pub not_covered: bool,
    pub unknown: bool,
    pub hotpatched: bool,
}

impl Work {
    pub fn up_to_date(&self) -> bool {
        !(self.pending || self.restart || self.failed || self.not_covered || self.unknown)
    }

    /// The work in words, most urgent first.
    pub fn words(&self) -> Vec<&'static str> {
        let mut w = Vec::new();
        for (on, word) in [
            (self.failed, "failed"),
            (self.restart, "restart required"),
            (self.pending, "hotpatch pending"),
            (self.unknown, "not checked in"),
            (self.not_covered, "not covered"),
        ] {
            if on {
                w.push(word);
            }
        }
        w
    }

    /// Whether the machine matches a `state=` filter of the list.
    pub fn matches(&self, state: &str, entitled: bool) -> bool {
        match state {
            "pending" => self.pending,
            "needs-restart" => self.restart,
            "failed" => self.failed,
            "not-covered" => self.not_covered,
            "unknown" => self.unknown,
            "up-to-date" => self.up_to_date(),
            "hotpatched" => self.hotpatched,
            "unentitled" => !entitled,
            _ => true,
        }
    }
}

/// Each machine's work, from its compliance rows.
pub fn work_of(rows: &[ComplianceRow]) -> BTreeMap<String, Work> {
    let mut out: BTreeMap<String, Work> = BTreeMap::new();
    for r in rows {
        let w = out.entry(r.machine_id.clone()).or_default();
        w.worst = Some(w.worst.map_or(r.status, |s| s.max(r.status)));
        match r.status {
            Status::Pending => w.pending = true,
            Status::NeedsRestart => w.restart = true,
            Status::ApplyFailed | Status::CheckFailed => w.failed = true,
            Status::NotCovered => w.not_covered = true,
            Status::Unknown => w.unknown = true,
            Status::Applied | Status::NothingToApply => {}
        }
        w.hotpatched |= r.applied_level > 0;
    }
    out
}

#[derive(Deserialize, Default, Clone)]
pub struct ListQuery {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub cve: String,
    #[serde(default)]
    pub seen: String,
    #[serde(default)]
    pub sort: String,
    pub page: Option<usize>,
}

impl ListQuery {
    fn url(&self, page: usize) -> String {
        let pairs = [
            ("state", self.state.as_str()),
            ("tag", &self.tag),
            ("target", &self.target),
            ("cve", &self.cve),
            ("seen", &self.seen),
            ("sort", &self.sort),
        ];
        let mut q: Vec<(&str, String)> =
            pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (*k, v.to_string())).collect();
        q.push(("page", page.to_string()));
        format!("/ui/machines?{}", serde_urlencoded::to_string(q).unwrap_or_default())
    }
}

/// One machine as the list shows it.
pub struct Listed {
    pub id: String,
    pub hostname: String,
    pub tags: Vec<String>,
    pub last_seen: Option<i64>,
}

/// LIKE pattern for a whole JSON string inside a JSON array's text.
fn json_member_pattern(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%\"{escaped}\"%")
}

/// The WHERE clause for the filters that SQL decides (all but `state`), its binds after `$1`.
fn sql_filters(q: &ListQuery, t: i64, b: &mut Binds) -> String {
    let mut sql = String::from("m.org_id = $1 AND m.revoked_at IS NULL");
    if !q.tag.is_empty() {
        let p = b.text(&json_member_pattern(q.tag.trim()));
        sql.push_str(&format!(" AND m.tags LIKE {p} ESCAPE '\\'"));
    }
    if !q.target.is_empty() {
        let p = b.text(q.target.trim());
        // IN, not a correlated EXISTS: SQLite then reads the few machines with that
        // file through the (file_name, machine_id) index instead of probing every machine.
        sql.push_str(&format!(" AND m.id IN (SELECT t.machine_id FROM machine_targets t WHERE t.file_name = {p})"));
    }
    if !q.cve.is_empty() {
        let p = b.text(&json_member_pattern(q.cve.trim()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM machine_targets t JOIN hotpatches h ON h.org_id = m.org_id AND h.build_id = t.build_id \
             WHERE t.machine_id = m.id AND t.applied_level < h.level AND h.cves LIKE {p} ESCAPE '\\')"
        ));
    }
    if q.seen == "24h" {
        // A number we computed, not caller text.
        sql.push_str(&format!(" AND (m.last_seen IS NULL OR m.last_seen < {})", t - SILENT_SECONDS));
    }
    sql
}

async fn candidates(
    st: &AppState,
    org_id: &str,
    q: &ListQuery,
    page: Option<usize>,
    entitled: bool,
) -> ApiResult<(Vec<Listed>, i64)> {
    let t = now();
    let mut b = Binds::default();
    let mut filter = sql_filters(q, t, &mut b);
    if !q.state.is_empty() || q.sort == "state" {
        crate::domain::work_flags::ensure_current(st, org_id, t).await?;
    }
    if let Some(c) = condition(&q.state, t, entitled) {
        filter = format!("{filter} AND {c}");
    }
    let order = match q.sort.as_str() {
        "last-seen" => "COALESCE(m.last_seen, 0), m.id".to_string(),
        "state" => format!("{} DESC, m.hostname, m.id", action_rank(t)),
        _ => "m.hostname, m.id".to_string(),
    };
    let limit = match page {
        Some(p) => format!(" LIMIT {PER_PAGE} OFFSET {}", p.saturating_sub(1).saturating_mul(PER_PAGE)),
        None => String::new(),
    };
    let sql =
        format!("SELECT m.id, m.hostname, m.tags, m.last_seen FROM machines m WHERE {filter} ORDER BY {order}{limit}");
    let rows = b.apply(sqlx::query(&sql).bind(org_id)).fetch_all(&st.db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Listed {
            id: r.try_get(0)?,
            hostname: r.try_get(1)?,
            tags: serde_json::from_str(&r.try_get::<String, _>(2)?)?,
            last_seen: r.try_get(3)?,
        });
    }
    let total = if page.is_some() {
        let sql = format!("SELECT CAST(COUNT(*) AS BIGINT) FROM machines m WHERE {filter}");
        b.apply(sqlx::query(&sql).bind(org_id)).fetch_one(&st.db.pool).await?.try_get(0)?
    } else {
        out.len() as i64
    };
    Ok((out, total))
}

/// The page of machines to show, their work, and how many match in all.
async fn listing(st: &AppState, org_id: &str, q: &ListQuery, entitled: bool) -> ApiResult<(Vec<(Listed, Work)>, i64)> {
    let page = q.page.unwrap_or(1).max(1);
    let (list, total) = candidates(st, org_id, q, Some(page), entitled).await?;
    let ids: Vec<String> = list.iter().map(|m| m.id.clone()).collect();
    let work = work_of(&rows_for(st, org_id, Some(&ids)).await?);
    let shown = list
        .into_iter()
        .map(|m| {
            let w = work.get(&m.id).cloned().unwrap_or_default();
            (m, w)
        })
        .collect();
    Ok((shown, total))
}

/// A filter's choices: (value, label).
const STATES: [(&str, &str); 9] = [
    ("", "any"),
    ("pending", "hotpatch pending"),
    ("needs-restart", "restart required"),
    ("failed", "failed"),
    ("not-covered", "not covered"),
    ("unknown", "unknown"),
    ("unentitled", "unentitled"),
    ("hotpatched", "hotpatched"),
    ("up-to-date", "up to date"),
];
const SEEN: [(&str, &str); 2] = [("", "any time"), ("24h", "not in 24 h")];
const SORTS: [(&str, &str); 3] =
    [("", "hostname"), ("state", "needs action first"), ("last-seen", "last seen, oldest first")];

fn filter_form(q: &ListQuery) -> Markup {
    let sel = |name: &str, current: &str, options: &[(&str, &str)]| {
        html! {
            label { (name) " " select name=(name) {
                @for (v, label) in options { option value=(v) selected[*v == current] { (label) } }
            } } " "
        }
    };
    let field = |name: &str, value: &str| {
        html! { label { (name) " " input type="text" name=(name) value=(value) size="14"; } " " }
    };
    html! {
        form method="get" action="/ui/machines" #filters {
            (sel("state", &q.state, &STATES))
            (field("tag", &q.tag))
            (field("target", &q.target))
            (field("cve", &q.cve))
            (sel("seen", &q.seen, &SEEN))
            (sel("sort", &q.sort, &SORTS))
            button type="submit" { "Filter" }
        }
    }
}

pub async fn machines_page(
    State(st): State<AppState>,
    u: UiUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Html<String>> {
    let entitled = crate::domain::entitlement::entitled(&st, &u.0.org_id, now()).await?;
    let (shown, total) = listing(&st, &u.0.org_id, &q, entitled).await?;
    let table: Vec<Vec<Markup>> = shown
        .iter()
        .map(|(m, w)| {
            vec![
                link(&format!("/ui/machines/{}", m.id), &m.hostname),
                w.worst.map(|s| status(s.as_str())).unwrap_or_else(|| html! {}),
                text(w.words().join(", ")),
                text(m.tags.join(", ")),
                text(m.last_seen.map(super::deployment_page::at).unwrap_or_else(|| "never".into())),
            ]
        })
        .collect();
    let mut page = Page::new();
    page.markup(filter_form(&q));
    let p = q.page.unwrap_or(1).max(1);
    page.markup(html! { p #count { (total) " machine(s) match." } });
    page.table("machines", &["hostname", "state", "needs", "tags", "last seen"], &table);
    let mut pager: Vec<Markup> = Vec::new();
    if p > 1 {
        pager.push(link(&q.url(p - 1), "previous page"));
    }
    if (p as i64).saturating_mul(PER_PAGE as i64) < total {
        pager.push(link(&q.url(p + 1), "next page"));
    }
    page.markup(html! {
        p #pager { "page " (p) " " @for (i, l) in pager.iter().enumerate() { @if i > 0 { " · " } (l) } }
    });
    if u.acts() {
        page.markup(super::fleet_forms::enroll_form(&u, &Default::default()));
    }
    Ok(Html(page.render("Machines", Some((&u.0.name, u.0.role.as_str())))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_counts_in_every_kind_of_work_it_has() {
        let row = |m: &str, status: Status, applied: i64| ComplianceRow {
            machine_id: m.into(),
            hostname: m.into(),
            file_name: "f".into(),
            build_id: "b".into(),
            applied_level: applied,
            latest_level: 1,
            status,
            detail: String::new(),
            cves_open: vec![],
            cves_fixed: vec![],
        };
        let rows = [
            row("a", Status::NeedsRestart, 0),
            row("a", Status::ApplyFailed, 0),
            row("a", Status::Pending, 0),
            row("b", Status::Applied, 1),
            row("c", Status::NotCovered, 0),
        ];
        let work = work_of(&rows);
        let n = |state: &str| work.values().filter(|w| w.matches(state, true)).count();
        assert_eq!((work.len(), n("needs-restart"), n("failed"), n("pending")), (3, 1, 1, 1));
        assert_eq!((n("hotpatched"), n("not-covered"), n("up-to-date"), n("unentitled")), (1, 1, 1, 0));
        assert!(work.values().all(|w| w.matches("unentitled", false)));
        assert_eq!(work_of(&rows)["a"].words(), ["failed", "restart required", "hotpatch pending"]);
    }

    #[test]
    fn like_patterns_match_whole_json_strings() {
        assert_eq!(json_member_pattern("team_db"), "%\"team\\_db\"%");
        let q = ListQuery { tag: "x".into(), seen: "24h".into(), ..Default::default() };
        let mut b = Binds::default();
        let sql = sql_filters(&q, 100_000, &mut b);
        assert!(sql.contains("m.tags LIKE $2") && sql.contains("m.last_seen < 13600"), "{sql}");
        assert_eq!(b.0, [super::super::work_sql::Bind::Text("%\"x\"%".into())]);
    }
}
