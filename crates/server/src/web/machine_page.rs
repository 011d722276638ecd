//! One machine: its facts, what it needs (restarts and why, hotpatches
//! pending), each target with the processes that map it, readiness as a list,
//! its history naming deployments by name, and for operators tags and revoke.

use axum::extract::{Path, State};
use axum::response::Html;
use serde_json::Value;
use sqlx::Row;

use super::html::{Form, Page, esc, link, status};
use super::session::UiUser;
use crate::api::compliance::rows_for;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::util::rfc3339;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Readiness as "check: value" lines, nested objects as "a / b" (bounded:
/// the agent's report is at most 16 KiB).
fn readiness_items(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, inner) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix} / {k}") };
                readiness_items(&key, inner, out);
            }
        }
        other => out.push(format!("<li><strong>{}</strong>: {}</li>", esc(prefix), esc(&text(other)))),
    }
}

async fn history(st: &AppState, org_id: &str, id: &str) -> ApiResult<Vec<Vec<String>>> {
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
            esc(&rfc3339(r.try_get(0)?)),
            link(&format!("/ui/deployments/{did}"), name.as_deref().unwrap_or(&did)),
            format!(
                "<span class=\"s-{}\">{}</span>",
                if state == "failed" { "apply-failed" } else { "applied" },
                esc(&state)
            ),
            esc(&r.try_get::<String, _>(4)?),
        ]);
    }
    Ok(out)
}

fn operator_forms(u: &UiUser, id: &str, m: &Value) -> String {
    if !u.acts() {
        return String::new();
    }
    let tags: Vec<String> = m["tags"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let mut html = super::fleet_forms::tags_form(u, id, &tags.join(", "));
    if m["revoked"] != Value::Bool(true) {
        html.push_str(&Form::button("revoke", &format!("/ui/machines/{id}/revoke"), &u.1, "Revoke this machine"));
    }
    html
}

pub async fn machine_page(State(st): State<AppState>, u: UiUser, Path(id): Path<String>) -> ApiResult<Html<String>> {
    let m = crate::api::fleet::machine_detail_json(&st, &u.0.org_id, &id).await?;
    let mut comp = rows_for(&st, &u.0.org_id, Some(std::slice::from_ref(&id))).await?;
    comp.sort_by_key(|r| std::cmp::Reverse(r.status));
    let holds = crate::holds::Holds::load(&st, &u.0.org_id, Some(&id)).await?;
    let processes = |build: &str| {
        m["targets"].as_array().and_then(|t| t.iter().find(|x| x["build_id"] == build)).map(|x| text(&x["processes"]))
    };
    let mut page = Page::new();
    if m["revoked"] == Value::Bool(true) {
        page.raw(&super::html::notice("error", "This machine is revoked: its requests are refused."));
    }
    page.table(
        "facts",
        &["hostname", "os", "kernel", "arch", "cores", "tags", "last seen"],
        &[["hostname", "os", "kernel", "arch", "cores", "tags", "last_seen"]
            .iter()
            .map(|k| esc(&text(&m[*k])))
            .collect()],
    );
    page.raw(&super::tiers::machine_tier_section(&st, &u, &id, &m).await?);
    page.raw(&operator_forms(&u, &id, &m));
    page.h(2, "To do");
    let todo: Vec<String> = comp
        .iter()
        .filter(|r| r.status > crate::api::compliance::Status::Applied)
        .map(|r| {
            let procs = processes(&r.build_id).unwrap_or_default();
            format!(
                "<li>{} {}: {} ({} process(es))</li>",
                status(r.status.as_str()),
                esc(&r.file_name),
                esc(&holds.detail(r, crate::util::now())),
                esc(&procs)
            )
        })
        .collect();
    page.raw(&format!(
        "<ul id=\"todo\">{}</ul>",
        if todo.is_empty() { "<li>nothing</li>".into() } else { todo.concat() }
    ));
    page.h(2, "Targets");
    let t: Vec<Vec<String>> = comp
        .iter()
        .filter(|r| !r.build_id.is_empty())
        .map(|r| {
            vec![
                esc(&r.file_name),
                format!("<code>{}</code>", esc(&r.build_id)),
                esc(&processes(&r.build_id).unwrap_or_default()),
                r.applied_level.to_string(),
                r.latest_level.to_string(),
                status(r.status.as_str()),
                esc(&r.detail),
            ]
        })
        .collect();
    page.table("targets", &["file", "build-id", "processes", "applied level", "latest level", "state", "detail"], &t);
    super::machine_sections::processes(&st, &id, &comp, &mut page).await?;
    page.h(2, "Readiness");
    let mut items = Vec::new();
    readiness_items("", &m["readiness"], &mut items);
    page.raw(&format!(
        "<ul id=\"readiness\">{}</ul>",
        if items.is_empty() { "<li>not reported</li>".into() } else { items.concat() }
    ));
    page.h(2, "History");
    page.table("history", &["at", "deployment", "result", "detail"], &history(&st, &u.0.org_id, &id).await?);
    let title = format!("Machine {}", m["hostname"].as_str().unwrap_or(""));
    Ok(Html(page.render(&title, Some((&u.0.name, u.0.role.as_str())))))
}
