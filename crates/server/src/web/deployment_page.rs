//! One deployment: what, where, when, its rings and each machine's result, the
//! halt reason, and in one sentence why nothing is happening yet.

use axum::extract::{Path, State};
use axum::response::Html;
use sqlx::Row;

use super::session::UiUser;
use super::view::{Form, Markup, Page, code, html, link, status, text};
use crate::domain::rollout::{Deployment, Kind, RingProgress, deployments, progress};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::util::{now, rfc3339};

/// A time for people: minutes, UTC.
pub fn at(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default()
}

fn duration(seconds: i64) -> String {
    match seconds {
        s if s % 3600 == 0 && s > 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Why the deployment does what it does now (or nothing), in one sentence.
pub fn explain(d: &Deployment, canary: &RingProgress, rest: &RingProgress, t: i64, entitled: bool) -> String {
    let total = canary.machines + rest.machines;
    let rest_starts = d.start_at + d.soak_seconds;
    match d.state.as_str() {
        "cancelled" => return format!("Cancelled ({}); nothing more is offered.", d.state_reason),
        "halted" => {
            return format!(
                "Halted: {}. Resume it to offer the work again, also to the machines that failed.",
                d.state_reason.trim_start_matches("halted: ")
            );
        }
        "paused" => return format!("Paused ({}); resume it to continue.", d.state_reason),
        _ => {}
    }
    if total == 0 {
        return "No machine is in this deployment's scope right now.".into();
    }
    if t < d.start_at {
        return format!(
            "Starts at {}: the canary ring ({} machines) first, ring 2 ({} machines) after a soak of {}.",
            at(d.start_at),
            canary.machines,
            rest.machines,
            duration(d.soak_seconds)
        );
    }
    if d.kind == Kind::Hotpatch && !entitled {
        return "The organisation is not entitled to hotpatches (no subscription or trial): no machine is offered this one.".into();
    }
    if let Some((name, w)) = d.window.as_ref().filter(|(_, w)| !w.is_open(t)) {
        return match w.current_or_next(t) {
            Some((s, e)) => format!("Waiting for maintenance window {name}: next open {} to {}.", at(s), at(e)),
            None => format!("Waiting for maintenance window {name}, which never opens (check its days)."),
        };
    }
    if t < rest_starts {
        let canary_word = if canary.machines == 0 {
            format!(
                "The canary ring is empty ({}% of {total} machines rounds to none), so nothing happens until",
                d.canary_percent
            )
        } else {
            format!("Canary ring: {} of {} done;", canary.applied + canary.failed, canary.machines)
        };
        return format!(
            "{canary_word} ring 2 ({} machines) starts at {} after the canary's soak of {}.",
            rest.machines,
            at(rest_starts),
            duration(d.soak_seconds)
        );
    }
    let reported = canary.applied + canary.failed + rest.applied + rest.failed;
    if reported >= total {
        return "Complete: every machine in scope reported a result.".into();
    }
    format!(
        "Rolling out: {reported} of {total} machines reported; the others pick it up at their next check-in \
         (machines that do not run the target have nothing to do)."
    )
}

/// What a closed window left, for people.
fn exceeded_sentence(e: &crate::domain::exceeded::Exceeded) -> String {
    format!(
        "Window exceeded: maintenance window {} ended at {} with {} machine{} not done; no new work is offered \
         until it opens again{}, and then they continue.",
        e.window,
        at(e.ended_at),
        e.count,
        if e.count == 1 { "" } else { "s" },
        e.continues_at.map(|s| format!(" at {}", at(s))).unwrap_or_default()
    )
}

fn actions(u: &UiUser, d: &Deployment) -> Markup {
    if !u.acts() {
        return html! {};
    }
    let base = format!("/ui/deployments/{}", d.id);
    let offered = [
        ("pause", "Pause", &["active"][..]),
        ("resume", "Resume", &["halted", "paused"][..]),
        ("cancel", "Cancel", &["active", "halted", "paused"][..]),
    ]
    .into_iter()
    .filter(|(_, _, from)| from.contains(&d.state.as_str()));
    html! {
        div #actions { @for (action, label, _) in offered { (Form::button(action, &format!("{base}/{action}"), &u.1, label)) } }
    }
}

async fn results(st: &AppState, id: &str) -> ApiResult<Vec<Vec<Markup>>> {
    let rows = sqlx::query(
        "SELECT r.machine_id, m.hostname, r.ring, r.status, r.detail, r.at FROM work_results r \
         JOIN machines m ON m.id = r.machine_id WHERE r.deployment_id = $1 \
         ORDER BY CASE WHEN r.status = 'failed' THEN 0 ELSE 1 END, m.hostname LIMIT 1000",
    )
    .bind(id)
    .fetch_all(&st.db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (mid, host): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        let ring: String = r.try_get(2)?;
        let state: String = r.try_get(3)?;
        out.push(vec![
            link(&format!("/ui/machines/{mid}"), &host),
            text(if ring == "canary" { "canary" } else { "ring 2" }),
            html! { span class=(if state == "failed" { "s-apply-failed" } else { "s-applied" }) { (state) } },
            text(r.try_get::<String, _>(4)?),
            text(rfc3339(r.try_get(5)?)),
        ]);
    }
    Ok(out)
}

fn summary(d: &Deployment) -> Vec<Vec<Markup>> {
    let what = match (&d.patch_id, &d.baseline_id) {
        (Some(p), _) => html! { "hotpatch " (code(p)) },
        (None, Some(b)) => html! { "baseline " (code(b)) },
        _ => html! {},
    };
    let window = match &d.window {
        None => "any time".to_string(),
        Some((name, w)) => match w.current_or_next(now()) {
            Some((s, e)) => format!("{name} (open {} to {})", at(s), at(e)),
            None => name.clone(),
        },
    };
    vec![vec![
        text(d.kind.as_str()),
        what,
        text(d.scope_label()),
        text(at(d.start_at)),
        text(window),
        text(format!(
            "canary {}%, soak {}, halt above {}% failed{}",
            d.canary_percent,
            duration(d.soak_seconds),
            d.failure_threshold_percent,
            d.rings_note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
        )),
        text(&d.reboot_policy),
    ]]
}

fn ring_rows(d: &Deployment, canary: &RingProgress, rest: &RingProgress) -> Vec<Vec<Markup>> {
    [("canary", canary, d.start_at), ("ring 2", rest, d.start_at + d.soak_seconds)]
        .iter()
        .map(|(name, p, starts)| {
            vec![
                text(name),
                text(p.machines),
                text(p.applied),
                text(p.failed),
                html! { @if p.started { "started " } @else { "starts " } (at(*starts)) },
            ]
        })
        .collect()
}

pub async fn deployment_page(State(st): State<AppState>, u: UiUser, Path(id): Path<String>) -> ApiResult<Html<String>> {
    let d = deployments(&st, &u.0.org_id, false)
        .await?
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("no deployment {id:?} in this organisation")))?;
    let (canary, rest) = progress(&st, &u.0.org_id, &d).await?;
    let t = now();
    let entitled = crate::domain::entitlement::entitled(&st, &u.0.org_id, t).await?;
    let mut page = Page::new();
    let reason = if d.state_reason.is_empty() { "since creation" } else { &d.state_reason };
    page.markup(html! {
        p #state { "State: " (status(&d.state)) " " span.reason { "(" (reason) ")" } }
        p #why .why { (explain(&d, &canary, &rest, t, entitled)) }
    });
    let exceeded = crate::domain::exceeded::left_by_window(&st, &u.0.org_id, &d, t).await?;
    if let Some(e) = &exceeded {
        page.markup(html! { p #window-exceeded .why { (exceeded_sentence(e)) } });
    }
    page.markup(actions(&u, &d));
    page.table("summary", &["kind", "what", "scope", "start", "window", "rings", "reboot"], &summary(&d));
    page.h(2, "Rings");
    page.table("rings", &["ring", "machines", "applied", "failed", "start"], &ring_rows(&d, &canary, &rest));
    page.h(2, "Results per machine");
    let mut rows = results(&st, &d.id).await?;
    if let Some(e) = &exceeded {
        rows.extend(e.machines.iter().map(|m| {
            vec![
                link(&format!("/ui/machines/{}", m.id), &m.hostname),
                text(if d.ring_start(&m.id) == d.start_at { "canary" } else { "ring 2" }),
                html! { span.s-unknown { "window exceeded" } },
                text(format!("continues in the next window of {}", e.window)),
                text(rfc3339(e.ended_at)),
            ]
        }));
    }
    page.table("results", &["machine", "ring", "result", "detail", "at"], &rows);
    Ok(Html(page.render(&format!("Deployment {}", d.name), Some((&u.0.name, u.0.role.as_str())))))
}
