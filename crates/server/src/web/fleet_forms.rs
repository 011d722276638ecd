//! Fleet forms: make an enrollment token (shown once), tag a machine, revoke it.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::form::{UiForm, api_body, done, failed, number, words};
use super::session::UiUser;
use super::view::{Form, Markup, Page, html, notice};
use crate::api::fleet;
use crate::api::json::ApiJson;
use crate::state::AppState;

#[derive(Deserialize, Default)]
pub struct EnrollFields {
    #[serde(default)]
    pub tags: String,
    #[serde(default)]
    pub hours: String,
    #[serde(default)]
    pub tier: String,
}

pub fn enroll_form(u: &UiUser, f: &EnrollFields) -> Markup {
    let hours = if f.hours.is_empty() { "24" } else { &f.hours };
    Form::new("enrollment-token", "/ui/enrollment-tokens", &u.1)
        .legend("Enroll machines")
        .input("text", "tags", "Tags for the machines", &f.tags, "comma-separated, e.g. prod, web")
        .input("number", "hours", "Valid for hours", hours, "1 to 720")
        .input("text", "tier", "Tier the machine joins", &f.tier, "empty: the organisation's last tier")
        .submit("Create enrollment token")
        .finish()
}

pub async fn create_enrollment_token(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    form: UiForm<EnrollFields>,
) -> Response {
    let UiForm { user: u, fields: f } = form;
    let st_secure = st.secure_cookies;
    let result = async {
        let hours = number(&f.hours, "valid for hours")?;
        let tier = Some(f.tier.trim()).filter(|t| !t.is_empty());
        let body = api_body(
            json!({ "tags": words(&f.tags), "expires_in_seconds": hours.saturating_mul(3600), "tier": tier }),
        )?;
        fleet::create_enrollment_token(State(st), u.0.clone(), ApiJson(body)).await
    }
    .await;
    let v = match result {
        Ok(axum::Json(v)) => v,
        Err(e) => return failed(&u, "Enroll machines", &e, enroll_form(&u, &f)),
    };
    // Shown on this response only: the server keeps just its hash.
    let token = v["token"].as_str().unwrap_or_default();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("SERVER");
    // Behind a proxy that terminates TLS the scheme is https too (--secure-cookies).
    let scheme = if st_secure { "https" } else { "http" };
    let mut page = Page::new();
    page.markup(notice("notice", "Enrollment token created. Copy it now: it is not shown again.")).markup(html! {
        p { "Token: " code #enrollment-token { (token) } }
        p {
            "Valid until " (v["expires"].as_str().unwrap_or_default()) " for one machine, which gets the tags "
            (words(&f.tags).join(", ")) ". On the machine, as root:"
        }
        pre { "hotpatch agent --enroll " (scheme) "://" (host) " " (token) }
        p { a href="/ui/machines" { "Back to machines" } }
    });
    Html(page.render("Enrollment token", Some((&u.0.name, u.0.role.as_str())))).into_response()
}

#[derive(Deserialize)]
pub struct TagFields {
    #[serde(default)]
    pub tags: String,
}

pub fn tags_form(u: &UiUser, id: &str, tags: &str) -> Markup {
    Form::new("machine-tags", &format!("/ui/machines/{id}/tags"), &u.1)
        .input("text", "tags", "Tags", tags, "comma-separated; replaces the machine's tags")
        .submit("Save tags")
        .finish()
}

pub async fn set_tags(State(st): State<AppState>, Path(id): Path<String>, form: UiForm<TagFields>) -> Response {
    let UiForm { user: u, fields: f } = form;
    let result = async {
        let body = api_body(json!({ "tags": words(&f.tags) }))?;
        fleet::set_tags(State(st), u.0.clone(), Path(id.clone()), ApiJson(body)).await
    }
    .await;
    match result {
        Ok(_) => done(&format!("/ui/machines/{}", super::catalog_forms::urlencode(&id))),
        Err(e) => failed(&u, "Tag a machine", &e, tags_form(&u, &id, &f.tags)),
    }
}

#[derive(Deserialize)]
pub struct Nothing {}

pub async fn revoke(State(st): State<AppState>, Path(id): Path<String>, form: UiForm<Nothing>) -> Response {
    let u = form.user;
    match fleet::revoke_machine(State(st), u.0.clone(), Path(id.clone())).await {
        Ok(_) => done(&format!("/ui/machines/{}", super::catalog_forms::urlencode(&id))),
        Err(e) => failed(&u, "Revoke a machine", &e, html! {}),
    }
}
