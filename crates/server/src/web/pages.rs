//! The pages: fleet overview, machines and their detail, catalog, deployments
//! with ring progress and their scope (tags or saved query), compliance by CVE and by machine, billing, audit log.

use axum::extract::State;
use axum::response::Html;
use serde_json::Value;

use super::session::UiUser;
use super::view::{Markup, Page, code, html, link, notice, status, text};
use crate::auth::Role;
use crate::domain::catalog::{baselines, hotpatches};
use crate::domain::compliance::{cves_of, rows};
use crate::domain::coverage::covered_until;
use crate::domain::entitlement::subscription;
use crate::domain::metering::{format_cents, invoices};
use crate::domain::rollout::{deployments, progress};
use crate::domain::targeting::saved_queries;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::util::{now, rfc3339};

fn render(page: &Page, title: &str, u: &UiUser) -> Html<String> {
    Html(page.render(title, Some((&u.0.name, u.0.role.as_str()))))
}

fn s(v: &Value) -> Markup {
    text(match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[derive(serde::Deserialize)]
pub struct Done {
    done: Option<String>,
    subject: Option<String>,
}

/// What a form just did, said above the page it returned to.
fn done_notice(d: &Done) -> Option<Markup> {
    let subject = d.subject.as_deref().unwrap_or("");
    let text = match d.done.as_deref()? {
        "uploaded" => format!("Hotpatch {subject} uploaded."),
        "baseline" => format!("Baseline {subject} registered."),
        _ => return None,
    };
    Some(notice("notice", &text))
}

pub async fn catalog_page(
    State(st): State<AppState>,
    u: UiUser,
    axum::extract::Query(done): axum::extract::Query<Done>,
) -> ApiResult<Html<String>> {
    let mut page = Page::new();
    if let Some(n) = done_notice(&done) {
        page.markup(n);
    }
    if u.acts() {
        page.markup(super::catalog_forms::upload_form(&u));
    }
    page.h(2, "Hotpatches");
    let h: Vec<Vec<Markup>> = hotpatches(&st, &u.0.org_id)
        .await?
        .iter()
        .map(|h| {
            vec![
                text(&h.patch_id),
                text(&h.file_name),
                code(&h.build_id),
                text(h.level),
                text(&h.classification),
                text(h.cves.join(", ")),
                code(h.artifact_sha256.get(..16).unwrap_or(&h.artifact_sha256)),
                deploy_link(&u, "patch", &h.patch_id),
            ]
        })
        .collect();
    page.table("hotpatches", &["patch", "file", "build-id", "level", "classification", "CVEs", "artifact", ""], &h);
    page.h(2, "Baselines");
    let all = baselines(&st, &u.0.org_id).await?;
    let t = now();
    let calendar = crate::domain::calendar::org_calendar(&st, &u.0.org_id).await?;
    let b: Vec<Vec<Markup>> = all
        .iter()
        .map(|b| {
            let cov = covered_until(b, &all, t, &calendar);
            vec![
                text(&b.name),
                text(&b.product),
                text(rfc3339(b.released)),
                html! { @if b.planned { "planned" } @else { "unplanned: " (b.reason) } },
                html! { @if let Some(c) = cov { @if c.expired { (status("needs-restart")) " " } (c.advice) } },
                deploy_link(&u, "baseline", &b.name),
            ]
        })
        .collect();
    page.table("baselines", &["baseline", "product", "released", "kind", "coverage", ""], &b);
    if u.acts() {
        page.markup(super::catalog_forms::baseline_form(&u, &Default::default()));
    }
    let year = jiff::Zoned::now().year();
    page.h(2, &format!("Release calendar {year}"));
    let cal = crate::domain::calendar::calendar_year(&st, &u.0.org_id, year).await?;
    let months: Vec<Vec<Markup>> = cal["months"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    let names: Vec<&str> = m["baselines"]
                        .as_array()
                        .map(|b| b.iter().filter_map(|x| x["name"].as_str()).collect())
                        .unwrap_or_default();
                    vec![s(&m["month"]), s(&m["kind"]), s(&m["release_date"]), s(&m["reason"]), text(names.join(", "))]
                })
                .collect()
        })
        .unwrap_or_default();
    page.table("calendar", &["month", "kind", "release day", "what it brings", "registered"], &months);
    Ok(render(&page, "Catalog", &u))
}

/// "deploy" next to a catalog entry, for those who may.
fn deploy_link(u: &UiUser, what: &str, name: &str) -> Markup {
    if !u.acts() {
        return html! {};
    }
    link(&format!("/ui/deployments/new?{what}={}", super::catalog_forms::urlencode(name)), "deploy")
}

fn bar(done: i64, total: i64) -> Markup {
    let pct = if total > 0 { (done * 100 / total).clamp(0, 100) } else { 0 };
    html! { span.bar title={ (pct) "%" } { i style={ "width:" (pct) "%" } {} } " " (done) "/" (total) }
}

pub async fn deployments_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let mut table = Vec::new();
    let t = now();
    let entitled = crate::domain::entitlement::entitled(&st, &u.0.org_id, t).await?;
    for d in deployments(&st, &u.0.org_id, false).await? {
        let (c, r) = progress(&st, &u.0.org_id, &d).await?;
        let ring = |p: &crate::domain::rollout::RingProgress| {
            html! {
                (bar(p.applied, p.machines))
                @if p.failed > 0 { ", " span.s-apply-failed { (p.failed) " failed" } }
                @if !p.started { " (not started)" }
            }
        };
        table.push(vec![
            link(&format!("/ui/deployments/{}", d.id), &d.name),
            text(d.kind.as_str()),
            text(d.patch_id.as_deref().or(d.baseline_id.as_deref()).unwrap_or("")),
            html! {
                (d.scope_label())
                @if let Some(q) = d.query.as_ref().and_then(|q| q.text.as_deref()) { ": " (code(q)) }
            },
            text(d.window.as_ref().map(|(n, _)| n.as_str()).unwrap_or("any time")),
            html! { (d.canary_percent) "% · " (ring(&c)) },
            ring(&r),
            status(&d.state),
            text(super::deployment_page::explain(&d, &c, &r, t, entitled)),
        ]);
    }
    let mut page = Page::new();
    if u.acts() {
        page.p("To start a deployment, choose \"deploy\" next to a hotpatch or baseline in the catalog.");
    }
    page.table(
        "deployments",
        &["name", "kind", "what", "scope", "window", "canary ring", "ring 2", "state", "why"],
        &table,
    );
    page.h(2, "Saved queries");
    let q: Vec<Vec<Markup>> = saved_queries(&st, &u.0.org_id)
        .await?
        .iter()
        .map(|q| vec![text(&q.name), code(&q.query), text(&q.created)])
        .collect();
    page.table("queries", &["name", "query", "created"], &q);
    page.h(2, "Maintenance windows");
    page.table(
        "windows",
        &["name", "days", "start", "duration", "time zone", "now", "next"],
        &super::schedule_forms::window_rows(&st, &u).await?,
    );
    if u.acts() {
        page.markup(super::schedule_forms::query_form(&u, &Default::default()));
        page.markup(super::schedule_forms::window_form(&u, &Default::default()));
    }
    Ok(render(&page, "Deployments", &u))
}

/// Rows shown on the compliance page; the CSV export has them all.
const COMPLIANCE_ROWS_SHOWN: usize = 1000;
/// Machines listed under each CVE.
const CVE_MACHINES_SHOWN: usize = 50;

fn cve_table(all: &[crate::domain::compliance::ComplianceRow]) -> Vec<Vec<Markup>> {
    cves_of(all)
        .iter()
        .map(|c| {
            let more = c.machines.len().saturating_sub(CVE_MACHINES_SHOWN);
            let machines = html! {
                @for (i, (h, f, st)) in c.machines.iter().take(CVE_MACHINES_SHOWN).enumerate() {
                    @if i > 0 { br; }
                    (h) " (" (f) ") " (status(st))
                }
                @if more > 0 { br; "and " (more) " more" }
            };
            vec![text(&c.cve), text(c.fixed), text(c.open), machines]
        })
        .collect()
}

pub async fn compliance_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let mut page = Page::new();
    page.markup(html! {
        p {
            "Export: " a href="/api/v1/compliance/machines?format=csv" { "machines CSV" }
            " · " a href="/api/v1/compliance/cves?format=csv" { "CVEs CSV" }
            " · " a href="/api/v1/compliance/targets?format=csv" { "targets CSV" }
        }
    });
    let mut all = rows(&st, &u.0.org_id).await?;
    let holds = crate::domain::holds::Holds::load(&st, &u.0.org_id, None).await?;
    page.h(2, "By CVE");
    page.table("cves", &["CVE", "fixed", "open", "machines"], &cve_table(&all));
    page.h(2, "By machine and target");
    // Rows that need action first; within a state, the hostname order stays.
    all.sort_by_key(|r| std::cmp::Reverse(r.status));
    if all.len() > COMPLIANCE_ROWS_SHOWN {
        page.p(&format!(
            "Showing the {COMPLIANCE_ROWS_SHOWN} rows that need action most of {}; the machines CSV has them all.",
            all.len()
        ));
    }
    let r: Vec<Vec<Markup>> = all
        .iter()
        .take(COMPLIANCE_ROWS_SHOWN)
        .map(|r| {
            vec![
                link(&format!("/ui/machines/{}", r.machine_id), &r.hostname),
                text(&r.file_name),
                text(r.applied_level),
                status(r.status.as_str()),
                text(holds.detail(r, crate::util::now())),
            ]
        })
        .collect();
    page.table("compliance", &["machine", "target", "level", "state", "detail"], &r);
    Ok(render(&page, "Compliance", &u))
}

pub async fn billing_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let mut page = Page::new();
    let sub = subscription(&st, &u.0.org_id).await?;
    let entitled = crate::domain::entitlement::entitled(&st, &u.0.org_id, now()).await?;
    page.table(
        "subscription",
        &["subscribed since", "until", "trial until", "price per core per month", "hotpatches"],
        &[vec![
            text(sub.active_from.map(rfc3339).unwrap_or_else(|| "not subscribed".into())),
            text(sub.active_until.map(rfc3339).unwrap_or_default()),
            text(sub.trial_until.map(rfc3339).unwrap_or_default()),
            html! { (format_cents(sub.price_cents_per_core_month)) " USD" },
            if entitled {
                html! { span.s-applied { "entitled" } }
            } else {
                html! { span.s-needs-restart { "baselines only" } }
            },
        ]],
    );
    if u.0.role >= Role::Admin {
        let month = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).strftime("%Y-%m").to_string();
        // Every month up to this one, newest first: this month's is among them.
        let invoices = invoices(&st, &u.0.org_id).await?;
        let inv = invoices
            .iter()
            .find(|i| i.month == month)
            .ok_or_else(|| crate::error::ApiError::Internal(format!("no invoice for the current month {month}")))?;
        page.h(2, &format!("Invoice {month} (to date)"));
        let lines: Vec<Vec<Markup>> = inv
            .lines
            .iter()
            .map(|l| {
                vec![
                    text(&l.hostname),
                    text(l.core_days),
                    text(l.trial_core_days),
                    html! { (format_cents(l.amount_cents)) " USD" },
                ]
            })
            .collect();
        page.table("invoice", &["machine", "billed core-days", "trial core-days", "amount"], &lines);
        page.markup(html! {
            p #invoice-total {
                "Total: " strong { (inv.amount) " USD" } " for " (inv.core_days) " core-days ("
                (inv.days_in_month) " days in month)"
            }
        });
        page.h(2, "Invoices");
        let all: Vec<Vec<Markup>> = invoices
            .iter()
            .map(|i| {
                vec![
                    text(&i.month),
                    text(&i.status),
                    text(i.issued.as_deref().unwrap_or("")),
                    text(i.core_days),
                    html! { (i.amount) " USD" },
                ]
            })
            .collect();
        page.table("invoices", &["month", "status", "issued", "billed core-days", "amount"], &all);
    }
    Ok(render(&page, "Billing", &u))
}

pub async fn audit_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let entries = crate::api::access::audit_entries(&st, &u.0.org_id, 500).await?;
    let rows: Vec<Vec<Markup>> = entries
        .iter()
        .map(|e| vec![s(&e["at"]), s(&e["actor"]), s(&e["action"]), s(&e["subject"]), s(&e["detail"])])
        .collect();
    let mut page = Page::new();
    page.table("audit", &["at", "actor", "action", "subject", "detail"], &rows);
    Ok(render(&page, "Audit log", &u))
}
