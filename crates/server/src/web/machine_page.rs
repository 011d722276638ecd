//! One machine: its facts, what it needs (restarts and why, hotpatches
//! pending), each target with the processes that map it, readiness as a list,
//! its history naming deployments by name, and for operators tags and revoke.

use axum::extract::{Path, State};
use axum::response::Html;
use serde_json::Value;
use sqlx::Row;

use super::session::UiUser;
use super::view::{Form, Markup, Page, code, html, link, notice, status, text};
use crate::domain::compliance::{Status, rows_for};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::util::rfc3339;

fn words(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::Array(items) => items.iter().map(words).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Readiness as "check: value" lines, nested objects as "a / b" (bounded:
/// the agent's report is at most 16 KiB).
fn readiness_items(prefix: &str, v: &Value, out: &mut Vec<Markup>) {
    match v {
        Value::Object(map) => {
            for (k, inner) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix} / {k}") };
                readiness_items(&key, inner, out);
            }
        }
        other => out.push(html! { li { strong { (prefix) } ": " (words(other)) } }),
    }
}

async fn history(st: &AppState, org_id: &str, id: &str) -> ApiResult<Vec<Vec<Markup>>> {
    let rows = sqlx::query(
        "SELECT h.at, h.deployment_id, d.name, h.status, h.detail FROM work_history h \
         LEFT JOIN deployments d ON d.id = h.deployment_id AND d.org_id = h.org_id \
         WHERE h.machine_id = $1 AND h.org_id = $2 ORDER BY h.at DESC LIMIT 100",
    )
    .bind(id)
    .bind(org_id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (did, name): (String, Option<String>) = (r.try_get(1)?, r.try_get(2)?);
        let state: String = r.try_get(3)?;
        out.push(vec![
            text(rfc3339(r.try_get(0)?)),
            link(&format!("/ui/deployments/{did}"), name.as_deref().unwrap_or(&did)),
            html! { span class=(if state == "failed" { "s-apply-failed" } else { "s-applied" }) { (state) } },
            text(r.try_get::<String, _>(4)?),
        ]);
    }
    Ok(out)
}

fn operator_forms(u: &UiUser, id: &str, m: &Value) -> Markup {
    if !u.acts() {
        return html! {};
    }
    let tags: Vec<String> = m["tags"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let revoke = (m["revoked"] != Value::Bool(true))
        .then(|| Form::button("revoke", &format!("/ui/machines/{id}/revoke"), &u.1, "Revoke this machine"));
    html! { (super::fleet_forms::tags_form(u, id, &tags.join(", "))) @if let Some(r) = revoke { (r) } }
}

pub async fn machine_page(State(st): State<AppState>, u: UiUser, Path(id): Path<String>) -> ApiResult<Html<String>> {
    let m = crate::api::fleet::machine_detail_json(&st, &u.0.org_id, &id).await?;
    let mut comp = rows_for(&st, &u.0.org_id, Some(std::slice::from_ref(&id))).await?;
    comp.sort_by_key(|r| std::cmp::Reverse(r.status));
    let holds = crate::domain::holds::Holds::load(&st, &u.0.org_id, Some(&id)).await?;
    let processes = |build: &str| {
        m["targets"].as_array().and_then(|t| t.iter().find(|x| x["build_id"] == build)).map(|x| words(&x["processes"]))
    };
    let mut page = Page::new();
    if m["revoked"] == Value::Bool(true) {
        page.markup(notice("error", "This machine is revoked: its requests are refused."));
    }
    page.table(
        "facts",
        &["hostname", "os", "kernel", "arch", "cores", "tags", "last seen"],
        &[["hostname", "os", "kernel", "arch", "cores", "tags", "last_seen"]
            .iter()
            .map(|k| text(words(&m[*k])))
            .collect()],
    );
    page.markup(super::tiers::machine_tier_section(&st, &u, &id, &m).await?);
    page.markup(operator_forms(&u, &id, &m));
    page.h(2, "To do");
    let todo: Vec<Markup> = comp
        .iter()
        .filter(|r| r.status > Status::Applied)
        .map(|r| {
            let procs = processes(&r.build_id).unwrap_or_default();
            html! { li { (status(r.status.as_str())) " " (r.file_name) ": " (holds.detail(r, crate::util::now())) " (" (procs) " process(es))" } }
        })
        .chain(
            crate::domain::signed_documents::machine_stale(&st, &u.0.org_id, &id)
                .await?
                .iter()
                .map(|c| html! { li.catalog-stale { (status("stale")) " " (c.reason()) } }),
        )
        .collect();
    page.markup(html! { ul #todo { @for li in &todo { (li) } @if todo.is_empty() { li { "nothing" } } } });
    page.h(2, "Targets");
    let t: Vec<Vec<Markup>> = comp
        .iter()
        .filter(|r| !r.build_id.is_empty())
        .map(|r| {
            vec![
                text(&r.file_name),
                code(&r.build_id),
                text(processes(&r.build_id).unwrap_or_default()),
                text(r.applied_level),
                text(r.latest_level),
                status(r.status.as_str()),
                text(&r.detail),
            ]
        })
        .collect();
    page.table("targets", &["file", "build-id", "processes", "applied level", "latest level", "state", "detail"], &t);
    super::machine_sections::processes(&st, &id, &comp, &mut page).await?;
    page.h(2, "Readiness");
    let mut items = Vec::new();
    readiness_items("", &m["readiness"], &mut items);
    page.markup(html! { ul #readiness { @for li in &items { (li) } @if items.is_empty() { li { "not reported" } } } });
    page.h(2, "History");
    page.table("history", &["at", "deployment", "result", "detail"], &history(&st, &u.0.org_id, &id).await?);
    let title = format!("Machine {}", m["hostname"].as_str().unwrap_or(""));
    Ok(Html(page.render(&title, Some((&u.0.name, u.0.role.as_str())))))
}
