//! Trusted publisher keys: the server's (read only here) and the organisation's,
//! which admins add and revoke; effective for the next upload, no restart.

use axum::extract::{Path, State};
use axum::response::{Html, Response};
use serde::Deserialize;

use super::form::{UiForm, done, failed};
use super::session::UiUser;
use super::view::{Form, Markup, Page, code, html, text};
use crate::error::ApiResult;
use crate::state::AppState;

#[derive(Deserialize, Default)]
pub struct KeyFields {
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub key: String,
}

fn add_form(u: &UiUser, f: &KeyFields) -> Markup {
    Form::new("add-key", "/ui/keys", &u.1)
        .legend("Trust a publisher key")
        .input("text", "label", "Label", &f.label, "who signs with it")
        .textarea("key", "Public key", &f.key, "the .pub file made by hotpatch keygen")
        .submit("Trust key")
        .finish()
}

pub async fn keys_page(State(st): State<AppState>, u: UiUser) -> ApiResult<Html<String>> {
    let keys = crate::trust::list(&st, &u.0.org_id).await?;
    let rows: Vec<Vec<Markup>> = keys
        .iter()
        .map(|k| {
            let action = if u.is_admin() && k.source == "organisation" {
                Form::button(&format!("revoke-{}", k.key_id), &format!("/ui/keys/{}/revoke", k.key_id), &u.1, "Revoke")
            } else {
                html! {}
            };
            vec![
                code(&k.key_id),
                text(&k.label),
                text(k.source),
                text(k.added.as_deref().unwrap_or("")),
                text(k.added_by.as_deref().unwrap_or("")),
                action,
            ]
        })
        .collect();
    let mut page = Page::new();
    page.p("Uploaded hotpatches must be signed by one of these keys.");
    page.table("keys", &["key id", "label", "from", "added", "by", ""], &rows);
    if u.is_admin() {
        page.markup(add_form(&u, &KeyFields::default()));
    }
    Ok(Html(page.render("Trusted publisher keys", Some((&u.0.name, u.0.role.as_str())))))
}

pub async fn add(State(st): State<AppState>, form: UiForm<KeyFields>) -> Response {
    let UiForm { user: u, fields: f } = form;
    match crate::trust::add(&st, &u.0, &f.label, &f.key).await {
        Ok(_) => done("/ui/keys"),
        Err(e) => failed(&u, "Trust a publisher key", &e, add_form(&u, &f)),
    }
}

pub async fn revoke(
    State(st): State<AppState>,
    Path(id): Path<String>,
    form: UiForm<super::fleet_forms::Nothing>,
) -> Response {
    let u = form.user;
    match crate::trust::revoke(&st, &u.0, &id).await {
        Ok(()) => done("/ui/keys"),
        Err(e) => failed(&u, "Revoke a publisher key", &e, html! {}),
    }
}
