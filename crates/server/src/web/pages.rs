//! The pages: fleet overview, machines and their detail, catalog, deployments
//! with ring progress and their scope (tags or saved query), compliance by CVE and by machine, billing, audit log.

use axum::extract::State;
use axum::response::Html;
use serde_json::Value;

use super::html::{Page, esc, link, status};
use super::session::UiUser;
use crate::api::billing::{format_cents, invoices, subscription};
use crate::api::catalog::{baselines, hotpatches};
use crate::api::compliance::{cves_of, rows};
use crate::api::deploy::{deployments, progress};
use crate::api::queries::saved_queries;
use crate::auth::Role;
use crate::coverage::covered_until;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::util::{now, rfc3339};

fn render(page: &Page, title: &str, u: &UiUser) -> Html<String> {
    Html(page.render(title, Some((&u.0.name, u.0.role.as_str()))))
}

fn s(v: &Value) -> String {
    esc(&match v {
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
fn done_notice(d: &Done) -> Option<String> {
    let subject = d.subject.as_deref().unwrap_or("");
    let text = match d.done.as_deref()? {
        "uploaded" => format!("Hotpatch {subject} uploaded."),
        "baseline" => format!("Baseline {subject} registered."),
        _ => return None,
    };
    Some(super::html::notice("notice", &text))
}

pub async fn catalog_page(
    State(st): State<AppState>,
    u: UiUser,
    axum::extract::Query(done): axum::extract::Query<Done>,
) -> ApiResult<Html<String>> {
    let mut page = Page::new();
    if let Some(n) = done_notice(&done) {
        page.raw(&n);
    }
    if u.acts() {
        page.raw(&super::catalog_forms::upload_form(&u));
    }
    page.h(2, "Hotpatches");
    let h: Vec<Vec<String>> = hotpatches(&st, &u.0.org_id)
        .await?
        .iter()
        .map(|h| {
            vec![
                esc(&h.patch_id),
                esc(&h.file_name),
                format!("<code>{}</code>", esc(&h.build_id)),
                h.level.to_string(),
                esc(&h.classification),
                esc(&h.cves.join(", ")),
                format!("<code>{}</code>", esc(h.artifact_sha256.get(..16).unwrap_or(&h.artifact_sha256))),
                deploy_link(&u, "patch", &h.patch_id),
            ]
        })
        .collect();
    page.table("hotpatches", &["patch", "file", "build-id", "level", "classification", "CVEs", "artifact", ""], &h);
    page.h(2, "Baselines");
    let all = baselines(&st, &u.0.org_id).await?;
    let t = now();
    let calendar = crate::api::calendar::org_calendar(&st, &u.0.org_id).await?;
    let b: Vec<Vec<String>> = all
        .iter()
        .map(|b| {
            let cov = covered_until(b, &all, t, &calendar);
            vec![
                esc(&b.name),
                esc(&b.product),
                esc(&rfc3339(b.released)),
                if b.planned { "planned".into() } else { format!("unplanned: {}", esc(&b.reason)) },
                cov.map(|c| if c.expired { status("needs-restart") + " " + &esc(&c.advice) } else { esc(&c.advice) })
                    .unwrap_or_default(),
                deploy_link(&u, "baseline", &b.name),
            ]
        })
        .collect();
    page.table("baselines", &["baseline", "product", "released", "kind", "coverage", ""], &b);
    if u.acts() {
        page.raw(&super::catalog_forms::baseline_form(&u, &Default::default()));
    }
    let year = jiff::Zoned::now().year();
    page.h(2, &format!("Release calendar {year}"));
    let cal = crate::api::calendar::calendar_year(&st, &u.0.org_id, year).await?;
    let months: Vec<Vec<String>> = cal["months"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    let names: Vec<&str> = m["baselines"]
                        .as_array()
                        .map(|b| b.iter().filter_map(|x| x["name"].as_str()).collect())
                        .unwrap_or_default();
                    vec![s(&m["month"]), s(&m["kind"]), s(&m["release_date"]), s(&m["reason"]), esc(&names.join(", "))]
                })
                .collect()
        })
        .unwrap_or_default();
    page.table("calendar", &["month", "kind", "release day", "what it brings", "registered"], &months);
    Ok(render(&page, "Catalog", &u))
}

/// "deploy" next to a catalog entry, for those who may.
fn deploy_link(u: &UiUser, what: &str, name: &str) -> String {
    if !u.acts() {
        return String::new();
    }
    link(&format!("/ui/deployments/new?{what}={}", super::catalog_forms::urlencode(name)), "deploy")
}

fn bar(done: i64, total: i64) -> String {
    let pct = if total > 0 { (done * 100 / total).clamp(0, 100) } else { 0 };
    format!("<span class=\"bar\" title=\"{pct}%\"><i style=\"width:{pct}%\"></i></span> {done}/{total}")
}

pub async fn deployments_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let mut table = Vec::new();
    let t = now();
    let entitled = crate::api::checkin::entitled(&st, &u.0.org_id, t).await?;
    for d in deployments(&st, &u.0.org_id, false).await? {
        let (c, r) = progress(&st, &u.0.org_id, &d).await?;
        let ring = |p: &crate::api::deploy::RingProgress| {
            format!(
                "{}{}{}",
                bar(p.applied, p.machines),
                if p.failed > 0 {
                    format!(", <span class=\"s-apply-failed\">{} failed</span>", p.failed)
                } else {
                    String::new()
                },
                if p.started { "" } else { " (not started)" }
            )
        };
        table.push(vec![
            link(&format!("/ui/deployments/{}", d.id), &d.name),
            esc(d.kind.as_str()),
            esc(d.patch_id.as_deref().or(d.baseline_id.as_deref()).unwrap_or("")),
            match d.query.as_ref().and_then(|q| q.text.as_deref()) {
                Some(text) => format!("{}: <code>{}</code>", esc(&d.scope_label()), esc(text)),
                None => esc(&d.scope_label()),
            },
            esc(d.window.as_ref().map(|(n, _)| n.as_str()).unwrap_or("any time")),
            format!("{}% · {}", d.canary_percent, ring(&c)),
            ring(&r),
            status(&d.state),
            esc(&super::deployment_page::explain(&d, &c, &r, t, entitled)),
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
    let q: Vec<Vec<String>> = saved_queries(&st, &u.0.org_id)
        .await?
        .iter()
        .map(|q| vec![esc(&q.name), format!("<code>{}</code>", esc(&q.query)), esc(&q.created)])
        .collect();
    page.table("queries", &["name", "query", "created"], &q);
    page.h(2, "Maintenance windows");
    page.table(
        "windows",
        &["name", "days", "start", "duration", "time zone", "now", "next"],
        &super::schedule_forms::window_rows(&st, &u).await?,
    );
    if u.acts() {
        page.raw(&super::schedule_forms::query_form(&u, &Default::default()));
        page.raw(&super::schedule_forms::window_form(&u, &Default::default()));
    }
    Ok(render(&page, "Deployments", &u))
}

/// Rows shown on the compliance page; the CSV export has them all.
const COMPLIANCE_ROWS_SHOWN: usize = 1000;
/// Machines listed under each CVE.
const CVE_MACHINES_SHOWN: usize = 50;

fn cve_table(all: &[crate::api::compliance::ComplianceRow]) -> Vec<Vec<String>> {
    cves_of(all)
        .iter()
        .map(|c| {
            let mut machines: Vec<String> = c
                .machines
                .iter()
                .take(CVE_MACHINES_SHOWN)
                .map(|(h, f, st)| format!("{} ({}) {}", esc(h), esc(f), status(st)))
                .collect();
            if c.machines.len() > CVE_MACHINES_SHOWN {
                machines.push(format!("and {} more", c.machines.len() - CVE_MACHINES_SHOWN));
            }
            vec![esc(&c.cve), c.fixed.to_string(), c.open.to_string(), machines.join("<br>")]
        })
        .collect()
}

pub async fn compliance_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let mut page = Page::new();
    page.raw("<p>Export: <a href=\"/api/v1/compliance/machines?format=csv\">machines CSV</a> · <a href=\"/api/v1/compliance/cves?format=csv\">CVEs CSV</a> · <a href=\"/api/v1/compliance/targets?format=csv\">targets CSV</a></p>");
    let mut all = rows(&st, &u.0.org_id).await?;
    let holds = crate::holds::Holds::load(&st, &u.0.org_id, None).await?;
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
    let r: Vec<Vec<String>> = all
        .iter()
        .take(COMPLIANCE_ROWS_SHOWN)
        .map(|r| {
            vec![
                link(&format!("/ui/machines/{}", r.machine_id), &r.hostname),
                esc(&r.file_name),
                r.applied_level.to_string(),
                status(r.status.as_str()),
                esc(&holds.detail(r, crate::util::now())),
            ]
        })
        .collect();
    page.table("compliance", &["machine", "target", "level", "state", "detail"], &r);
    Ok(render(&page, "Compliance", &u))
}

pub async fn billing_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let mut page = Page::new();
    let sub = subscription(&st, &u.0.org_id).await?;
    let entitled = crate::api::checkin::entitled(&st, &u.0.org_id, now()).await?;
    page.table(
        "subscription",
        &["subscribed since", "until", "trial until", "price per core per month", "hotpatches"],
        &[vec![
            esc(&sub.active_from.map(rfc3339).unwrap_or_else(|| "not subscribed".into())),
            esc(&sub.active_until.map(rfc3339).unwrap_or_default()),
            esc(&sub.trial_until.map(rfc3339).unwrap_or_default()),
            format!("{} USD", format_cents(sub.price_cents_per_core_month)),
            if entitled {
                status("applied").replace(">applied<", ">entitled<")
            } else {
                status("needs-restart").replace(">needs-restart<", ">baselines only<")
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
        let lines: Vec<Vec<String>> = inv
            .lines
            .iter()
            .map(|l| {
                vec![
                    esc(&l.hostname),
                    l.core_days.to_string(),
                    l.trial_core_days.to_string(),
                    format!("{} USD", format_cents(l.amount_cents)),
                ]
            })
            .collect();
        page.table("invoice", &["machine", "billed core-days", "trial core-days", "amount"], &lines);
        page.raw(&format!(
            "<p id=\"invoice-total\">Total: <strong>{} USD</strong> for {} core-days ({} days in month)</p>",
            esc(&inv.amount),
            inv.core_days,
            inv.days_in_month
        ));
        page.h(2, "Invoices");
        let all: Vec<Vec<String>> = invoices
            .iter()
            .map(|i| {
                vec![
                    esc(&i.month),
                    esc(&i.status),
                    esc(i.issued.as_deref().unwrap_or("")),
                    i.core_days.to_string(),
                    format!("{} USD", esc(&i.amount)),
                ]
            })
            .collect();
        page.table("invoices", &["month", "status", "issued", "billed core-days", "amount"], &all);
    }
    Ok(render(&page, "Billing", &u))
}

pub async fn audit_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let entries = crate::api::access::audit_entries(&st, &u.0.org_id, 500).await?;
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| vec![s(&e["at"]), s(&e["actor"]), s(&e["action"]), s(&e["subject"]), s(&e["detail"])])
        .collect();
    let mut page = Page::new();
    page.table("audit", &["at", "actor", "action", "subject", "detail"], &rows);
    Ok(render(&page, "Audit log", &u))
}
