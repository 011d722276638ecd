//! Tiers in the web UI: the organisation's tiers and how many machines follow
//! each, every hotpatch with the tier it reached and a button to promote it to
//! the next, pins; forms to set the tiers (admins), promote, pin and unpin
//! (operators) and put a machine in a tier (on the machine's page).

use axum::extract::{Path, State};
use axum::response::{Html, Response};
use serde::Deserialize;
use serde_json::Value;

use super::catalog_forms::urlencode;
use super::fleet_forms::Nothing;
use super::form::{UiForm, done, failed, number, optional};
use super::session::UiUser;
use super::view::{Form, Markup, Page, code, html, text};
use crate::domain::catalog::hotpatches;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::tiers::Gate;
use crate::tiers::change::{self, NewPin, NewTier};

#[derive(Deserialize, Default)]
pub struct TierFields {
    #[serde(default)]
    pub tiers: String,
}

#[derive(Deserialize, Default)]
pub struct PinFields {
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub build_id: String,
    #[serde(default)]
    pub level: String,
}

#[derive(Deserialize, Default)]
pub struct MachineTierFields {
    #[serde(default)]
    pub tier: String,
}

/// "edge:0, beta:24, stable" as tiers in order, each with its hours (default 0).
pub fn parse_tiers(text: &str) -> ApiResult<Vec<NewTier>> {
    super::form::words(text)
        .iter()
        .map(|w| match w.split_once(':') {
            None => Ok(NewTier { name: w.clone(), deploy_after_hours: 0 }),
            Some((name, hours)) => Ok(NewTier {
                name: name.to_string(),
                deploy_after_hours: number(hours, &format!("the hours of tier {name:?}"))?,
            }),
        })
        .collect()
}

fn tiers_form(u: &UiUser, f: &TierFields) -> Markup {
    Form::new("set-tiers", "/ui/tiers", &u.1)
        .legend("Tiers, in order")
        .input("text", "tiers", "Tiers", &f.tiers, "name:hours to deploy after, e.g. edge:0, beta:24, stable:72")
        .submit("Save tiers")
        .finish()
}

fn pin_form(u: &UiUser, f: &PinFields) -> Markup {
    Form::new("add-pin", "/ui/pins", &u.1)
        .legend("Pin a group of machines to a level")
        .input("text", "tag", "Tag", &f.tag, "or a saved query below")
        .input("text", "query", "Saved query", &f.query, "its name")
        .input("text", "build_id", "Build-id", &f.build_id, "of the baseline")
        .input("number", "level", "Level", &f.level, "no higher level until unpinned")
        .submit("Pin")
        .finish()
}

fn hotpatch_rows(u: &UiUser, gate: &Gate, list: &[crate::domain::catalog::Hotpatch]) -> Vec<Vec<Markup>> {
    list.iter()
        .map(|h| {
            let reached = gate.reached(&h.patch_id).map_or("none".to_string(), |t| t.name.clone());
            let action = match gate.next_tier(&h.patch_id) {
                Some(next) if u.acts() => Form::button(
                    &format!("promote-{}", h.patch_id),
                    &format!("/ui/hotpatches/{}/promote", urlencode(&h.patch_id)),
                    &u.1,
                    &format!("Promote to {}", next.name),
                ),
                _ => html! {},
            };
            vec![text(&h.patch_id), text(&h.file_name), text(h.level), text(&reached), action]
        })
        .collect()
}

fn s(v: &Value) -> Markup {
    text(match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

pub async fn tiers_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let org = &u.0.org_id;
    let gate = Gate::load(&st, org).await?;
    let shown = crate::api::tiers::tiers_json(&st, org).await?;
    let mut page = Page::new();
    if gate.tiers.is_empty() {
        page.p("No tiers: every deployed hotpatch is offered to every machine in the deployment's scope.");
    } else {
        page.p("A machine is offered a hotpatch once it was promoted to the machine's tier and the tier's delay passed. Machines not put in a tier follow the last one.");
    }
    let tier_rows: Vec<Vec<Markup>> = shown["tiers"]
        .as_array()
        .map(|t| t.iter().map(|x| vec![s(&x["name"]), s(&x["deploy_after_hours"]), s(&x["machines"])]).collect())
        .unwrap_or_default();
    page.table("tiers", &["tier", "deploy after (hours)", "machines"], &tier_rows);
    if u.is_admin() {
        let current: Vec<String> =
            gate.tiers.iter().map(|t| format!("{}:{}", t.name, t.deploy_after_seconds / 3600)).collect();
        page.markup(tiers_form(&u, &TierFields { tiers: current.join(", ") }));
    }
    page.h(2, "Hotpatches");
    let rows = hotpatch_rows(&u, &gate, &hotpatches(&st, org).await?);
    page.table("promotions", &["patch", "file", "level", "tier reached", ""], &rows);
    page.h(2, "Pins");
    let pin_rows: Vec<Vec<Markup>> = gate
        .pins
        .iter()
        .map(|p| {
            let remove = if u.acts() {
                Form::button(&format!("unpin-{}", p.id), &format!("/ui/pins/{}/remove", p.id), &u.1, "Unpin")
            } else {
                html! {}
            };
            vec![text(p.scope_label()), code(&p.build_id), text(p.level), remove]
        })
        .collect();
    page.table("pins", &["machines", "build-id", "held at level", ""], &pin_rows);
    if u.acts() {
        page.markup(pin_form(&u, &PinFields::default()));
    }
    Ok(Html(page.render("Tiers", Some((&u.0.name, u.0.role.as_str())))))
}

pub async fn set_tiers(State(st): State<AppState>, form: UiForm<TierFields>) -> Response {
    let UiForm { user: u, fields: f } = form;
    let result = match parse_tiers(&f.tiers) {
        Ok(tiers) => change::set_tiers(&st, &u.0, &tiers).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => done("/ui/tiers"),
        Err(e) => failed(&u, "Set tiers", &e, tiers_form(&u, &f)),
    }
}

pub async fn promote(State(st): State<AppState>, Path(patch_id): Path<String>, form: UiForm<Nothing>) -> Response {
    let u = form.user;
    match change::promote(&st, &u.0, &patch_id, None).await {
        Ok(_) => done("/ui/tiers"),
        Err(e) => failed(&u, "Promote a hotpatch", &e, html! {}),
    }
}

pub async fn add_pin(State(st): State<AppState>, form: UiForm<PinFields>) -> Response {
    let UiForm { user: u, fields: f } = form;
    let pin = number(&f.level, "level").map(|level| NewPin {
        tag: optional(&f.tag),
        query: optional(&f.query),
        build_id: f.build_id.trim().to_string(),
        level,
    });
    let result = match pin {
        Ok(pin) => change::add_pin(&st, &u.0, &pin).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => done("/ui/tiers"),
        Err(e) => failed(&u, "Pin machines", &e, pin_form(&u, &f)),
    }
}

pub async fn remove_pin(State(st): State<AppState>, Path(id): Path<String>, form: UiForm<Nothing>) -> Response {
    let u = form.user;
    match change::remove_pin(&st, &u.0, &id).await {
        Ok(_) => done("/ui/tiers"),
        Err(e) => failed(&u, "Unpin machines", &e, html! {}),
    }
}

/// The machine page's form: choose the machine's tier.
pub fn machine_tier_form(u: &UiUser, machine_id: &str, gate: &Gate, current: Option<&str>) -> Markup {
    if gate.tiers.is_empty() {
        return html! {};
    }
    let last = gate.tiers.last().map(|t| t.name.as_str()).unwrap_or_default();
    let mut options = vec![(String::new(), format!("default (the last tier, {last})"))];
    options.extend(gate.tiers.iter().map(|t| (t.name.clone(), t.name.clone())));
    Form::new("machine-tier", &format!("/ui/machines/{}/tier", urlencode(machine_id)), &u.1)
        .select("tier", "Tier", &options, current.unwrap_or(""))
        .submit("Set tier")
        .finish()
}

pub async fn set_machine_tier(
    State(st): State<AppState>,
    Path(id): Path<String>,
    form: UiForm<MachineTierFields>,
) -> Response {
    let UiForm { user: u, fields: f } = form;
    let tier = optional(&f.tier);
    match change::set_machine_tier(&st, &u.0, &id, tier.as_deref()).await {
        Ok(_) => done(&format!("/ui/machines/{}", urlencode(&id))),
        Err(e) => failed(&u, "Set the machine's tier", &e, html! {}),
    }
}

/// The machine page's tier: the one it follows, and for operators the form to change it.
pub async fn machine_tier_section(st: &AppState, u: &UiUser, id: &str, m: &Value) -> ApiResult<Markup> {
    let gate = Gate::load(st, &u.0.org_id).await?;
    let current = m["tier"].as_str();
    let follows = gate.tier_of(current).map(|t| t.name.clone());
    let form = (u.acts() && m["revoked"] != Value::Bool(true)).then(|| machine_tier_form(u, id, &gate, current));
    Ok(html! {
        @if let Some(t) = follows { p #tier { "Tier: " (t) } }
        @if let Some(form) = form { (form) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_typed_in_a_form() {
        let t = parse_tiers("edge:0, beta:24 stable").unwrap_or_default();
        let got: Vec<(&str, i64)> = t.iter().map(|t| (t.name.as_str(), t.deploy_after_hours)).collect();
        assert_eq!(got, [("edge", 0), ("beta", 24), ("stable", 0)]);
        let e = parse_tiers("edge:soon").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("hours of tier \"edge\""), "{e}");
    }
}
