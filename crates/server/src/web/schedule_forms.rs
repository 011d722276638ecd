//! What deployments are scheduled and scoped with: maintenance windows and
//! saved queries, listed and made on the deployments page.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::form::{UiForm, api_body, done, failed, number, words};
use super::session::UiUser;
use super::view::{Form, Markup, html, text};
use crate::api::json::ApiJson;
use crate::api::{deploy, queries};
use crate::error::ApiResult;
use crate::state::AppState;

#[derive(Deserialize, Default)]
pub struct WindowFields {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub days: String,
    #[serde(default)]
    pub start: String,
    #[serde(default)]
    pub minutes: String,
    #[serde(default)]
    pub time_zone: String,
}

pub fn window_form(u: &UiUser, f: &WindowFields) -> Markup {
    let zone = if f.time_zone.is_empty() { "UTC" } else { &f.time_zone };
    Form::new("new-window", "/ui/maintenance-windows", &u.1)
        .legend("New maintenance window")
        .input("text", "name", "Name", &f.name, "")
        .input("text", "days", "Days", &f.days, "e.g. tue, thu")
        .input("text", "start", "Start", &f.start, "local time HH:MM")
        .input("number", "minutes", "Minutes", &f.minutes, "1 to 10080")
        .input("text", "time_zone", "Time zone", zone, "IANA, e.g. Europe/Berlin")
        .submit("Create window")
        .finish()
}

#[derive(Deserialize, Default)]
pub struct QueryFields {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub query: String,
}

pub fn query_form(u: &UiUser, f: &QueryFields) -> Markup {
    Form::new("new-query", "/ui/queries", &u.1)
        .legend("New saved query")
        .input("text", "name", "Name", &f.name, "")
        .input("text", "query", "Query", &f.query, "e.g. tag:prod and hostname:web-* and not kernel:5.*")
        .submit("Save query")
        .finish()
}

/// The windows as a table: name, days, start, duration, zone, open now, next opening.
pub async fn window_rows(st: &AppState, u: &UiUser) -> ApiResult<Vec<Vec<Markup>>> {
    let axum::Json(v) = deploy::list_windows(State(st.clone()), u.0.clone()).await?;
    let word = |x: &Value| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string());
    Ok(v["windows"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|w| {
                    let days: Vec<String> =
                        w["days"].as_array().map(|d| d.iter().map(word).collect()).unwrap_or_default();
                    vec![
                        text(word(&w["name"])),
                        text(days.join(", ")),
                        text(word(&w["start"])),
                        html! { (word(&w["duration_minutes"])) " min" },
                        text(word(&w["time_zone"])),
                        text(if w["open_now"] == json!(true) { "open" } else { "closed" }),
                        text(format!("{} to {}", word(&w["next"]["start"]), word(&w["next"]["end"]))),
                    ]
                })
                .collect()
        })
        .unwrap_or_default())
}

pub async fn create_window(State(st): State<AppState>, form: UiForm<WindowFields>) -> Response {
    let UiForm { user: u, fields: f } = form;
    let result = async {
        let body = api_body(json!({
            "name": f.name.trim(), "days": words(&f.days), "start": f.start.trim(),
            "duration_minutes": number(&f.minutes, "minutes")?, "time_zone": f.time_zone.trim(),
        }))?;
        deploy::create_window(State(st), u.0.clone(), ApiJson(body)).await
    }
    .await;
    match result {
        Ok(_) => done("/ui/deployments"),
        Err(e) => failed(&u, "New maintenance window", &e, window_form(&u, &f)),
    }
}

pub async fn create_query(State(st): State<AppState>, form: UiForm<QueryFields>) -> Response {
    let UiForm { user: u, fields: f } = form;
    let result = async {
        let body = api_body(json!({ "name": f.name.trim(), "query": f.query.trim() }))?;
        queries::create_query(State(st), u.0.clone(), ApiJson(body)).await
    }
    .await;
    match result {
        Ok(_) => done("/ui/deployments"),
        Err(e) => failed(&u, "New saved query", &e, query_form(&u, &f)),
    }
}
