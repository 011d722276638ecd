//! Deployment forms: create one from a catalog entry (scope by tags or a saved
//! query, with a preview of the machines it reaches; start, window, rings,
//! reboot policy), and pause, resume or cancel it.

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::form::{UiForm, api_body, done, failed, number, optional, words};
use super::session::UiUser;
use super::view::{Form, Markup, Page, html};
use crate::api::deploy;
use crate::api::json::ApiJson;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize, Default, Clone)]
pub struct DeployFields {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub patch_id: String,
    #[serde(default)]
    pub baseline: String,
    #[serde(default)]
    pub tags: String,
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub start_at: String,
    #[serde(default)]
    pub window: String,
    #[serde(default)]
    pub canary_percent: String,
    #[serde(default)]
    pub soak_minutes: String,
    #[serde(default)]
    pub failure_threshold_percent: String,
    #[serde(default)]
    pub reboot_policy: String,
}

/// The catalog entry a new deployment starts from.
#[derive(Deserialize)]
pub struct Source {
    patch: Option<String>,
    baseline: Option<String>,
}

fn opts(list: &[&str]) -> Vec<(String, String)> {
    list.iter().map(|s| (s.to_string(), s.to_string())).collect()
}

/// The choices the form offers: windows and saved queries by name.
async fn choices(st: &AppState, org_id: &str) -> ApiResult<(Vec<(String, String)>, Vec<(String, String)>)> {
    let mut windows = vec![(String::new(), "any time".to_string())];
    let rows = sqlx::query("SELECT name FROM maintenance_windows WHERE org_id = $1 ORDER BY name")
        .bind(org_id)
        .fetch_all(&st.db.pool)
        .await?;
    for r in rows {
        let name: String = sqlx::Row::try_get(&r, 0)?;
        windows.push((name.clone(), name));
    }
    let mut queries = vec![(String::new(), "none (scope by tags)".to_string())];
    for q in crate::domain::targeting::saved_queries(st, org_id).await? {
        queries.push((q.name.clone(), format!("{}: {}", q.name, q.query)));
    }
    Ok((windows, queries))
}

async fn deploy_form(st: &AppState, u: &UiUser, f: &DeployFields) -> ApiResult<Markup> {
    let (windows, queries) = choices(st, &u.0.org_id).await?;
    let kinds = if f.baseline.is_empty() { opts(&["hotpatch", "rollback"]) } else { opts(&["baseline"]) };
    let what = html! {
        @if f.baseline.is_empty() { p { "Hotpatch " code { (f.patch_id) } } } @else { p { "Baseline " code { (f.baseline) } } }
        input type="hidden" name="patch_id" value=(f.patch_id);
        input type="hidden" name="baseline" value=(f.baseline);
    };
    Ok(Form::new("new-deployment", "/ui/deployments", &u.1)
        .markup(what)
        .input("text", "name", "Name", &f.name, "")
        .select("kind", "Kind", &kinds, &f.kind)
        .input("text", "tags", "Machines with all these tags", &f.tags, "comma-separated; empty: every machine")
        .select("query", "or the machines of a saved query", &queries, &f.query)
        .input("text", "start_at", "Start at", &f.start_at, "RFC 3339, e.g. 2027-05-04T14:00:00Z; empty: now")
        .select("window", "Maintenance window", &windows, &f.window)
        .input("number", "canary_percent", "Canary ring, % of machines", &f.canary_percent, SERVER_CHOOSES)
        .input("number", "soak_minutes", "Canary soak before the rest, minutes", &f.soak_minutes, SERVER_CHOOSES)
        .input("number", "failure_threshold_percent", "Halt when failures pass, %", &f.failure_threshold_percent, "")
        .select("reboot_policy", "Reboot", &opts(&["if-required", "never", "always"]), &f.reboot_policy)
        .markup(html! { button type="submit" formaction="/ui/deployments/preview" { "Preview machines" } " " })
        .submit("Create deployment")
        .finish())
}

fn defaults(from: Source) -> DeployFields {
    let (patch_id, baseline) = (from.patch.unwrap_or_default(), from.baseline.unwrap_or_default());
    let subject = if baseline.is_empty() { &patch_id } else { &baseline };
    DeployFields {
        name: format!("roll-{subject}"),
        kind: if baseline.is_empty() { "hotpatch".into() } else { "baseline".into() },
        failure_threshold_percent: "10".into(),
        reboot_policy: "if-required".into(),
        patch_id,
        baseline,
        ..DeployFields::default()
    }
}

fn render(u: &UiUser, page: &Page) -> Html<String> {
    Html(page.render("New deployment", Some((&u.0.name, u.0.role.as_str()))))
}

pub async fn new_page(State(st): State<AppState>, u: UiUser, Query(from): Query<Source>) -> Response {
    let result = async {
        u.0.require(crate::auth::Role::Operator)?;
        deploy_form(&st, &u, &defaults(from)).await
    }
    .await;
    match result {
        Ok(form) => {
            let mut page = Page::new();
            page.markup(form);
            render(&u, &page).into_response()
        }
        Err(e) => failed(&u, "New deployment", &e, html! {}),
    }
}

/// What an empty canary or soak field means.
const SERVER_CHOOSES: &str = "empty: 10% then 60 min; all at once below 10 machines";

fn body(f: &DeployFields) -> ApiResult<deploy::NewDeployment> {
    let mut rings =
        json!({ "failure_threshold_percent": number(&f.failure_threshold_percent, "failure threshold %")? });
    if optional(&f.canary_percent).is_some() {
        rings["canary_percent"] = json!(number(&f.canary_percent, "canary %")?);
    }
    if optional(&f.soak_minutes).is_some() {
        rings["soak_seconds"] = json!(number(&f.soak_minutes, "soak minutes")?.saturating_mul(60));
    }
    let mut v = json!({ "name": f.name.trim(), "kind": f.kind, "rings": rings, "reboot_policy": f.reboot_policy });
    if let Some(p) = optional(&f.patch_id) {
        v["patch_id"] = json!(p);
    }
    if let Some(b) = optional(&f.baseline) {
        v["baseline"] = json!(b);
    }
    let tags = words(&f.tags);
    v["scope"] = match optional(&f.query) {
        Some(q) if tags.is_empty() => json!({ "query": q }),
        Some(q) => json!({ "query": q, "tags": tags }),
        None => json!({ "tags": tags }),
    };
    if let Some(t) = optional(&f.start_at) {
        v["start_at"] = json!(t);
    }
    if let Some(w) = optional(&f.window) {
        v["window"] = json!(w);
    }
    api_body(v)
}

pub async fn create(State(st): State<AppState>, form: UiForm<DeployFields>) -> Response {
    let UiForm { user: u, fields: f } = form;
    let result = async { deploy::create_deployment(State(st.clone()), u.0.clone(), ApiJson(body(&f)?)).await }.await;
    match result {
        Ok(axum::Json(v)) => done(&format!("/ui/deployments/{}", v["id"].as_str().unwrap_or_default())),
        Err(e) => {
            let form = deploy_form(&st, &u, &f).await.unwrap_or_else(|_| html! {});
            failed(&u, "New deployment", &e, form)
        }
    }
}

/// The machines the scope in the form reaches now (facts of their last check-in).
async fn reached(st: &AppState, org_id: &str, f: &DeployFields) -> ApiResult<Vec<String>> {
    let query = match optional(&f.query) {
        None => None,
        Some(name) => {
            let row = sqlx::query("SELECT query FROM saved_queries WHERE org_id = $1 AND name = $2")
                .bind(org_id)
                .bind(&name)
                .fetch_optional(&st.db.pool)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no saved query {name:?}")))?;
            Some(sqlx::Row::try_get::<String, _>(&row, 0)?)
        }
    };
    let machines = crate::domain::targeting::reached(st, org_id, &words(&f.tags), query.as_deref()).await?;
    Ok(machines.into_iter().map(|m| m.hostname).collect())
}

pub async fn preview(State(st): State<AppState>, form: UiForm<DeployFields>) -> Response {
    let UiForm { user: u, fields: f } = form;
    let result = async {
        let hosts = reached(&st, &u.0.org_id, &f).await?;
        let mut page = Page::new();
        let shown: Vec<&str> = hosts.iter().take(50).map(String::as_str).collect();
        let more = if hosts.len() > 50 { format!(" and {} more", hosts.len() - 50) } else { String::new() };
        page.markup(html! {
            p #preview { "This scope reaches " strong { (hosts.len()) } " machine(s) now: " (shown.join(", ")) (more) }
        });
        page.markup(deploy_form(&st, &u, &f).await?);
        Ok::<_, ApiError>(render(&u, &page).into_response())
    }
    .await;
    match result {
        Ok(r) => r,
        Err(e) => {
            let form = deploy_form(&st, &u, &f).await.unwrap_or_else(|_| html! {});
            failed(&u, "New deployment", &e, form)
        }
    }
}

/// Pause, resume or cancel, as the API does it.
pub async fn change_state(
    State(st): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    form: UiForm<super::fleet_forms::Nothing>,
) -> Response {
    let u = form.user;
    let (s, user, p) = (State(st), u.0.clone(), Path(id.clone()));
    let result = match action.as_str() {
        "pause" => deploy::pause_deployment(s, user, p).await,
        "resume" => deploy::resume_deployment(s, user, p).await,
        "cancel" => deploy::cancel_deployment(s, user, p).await,
        other => Err(ApiError::NotFound(format!("no deployment action {other:?}"))),
    };
    match result {
        Ok(_) => done(&format!("/ui/deployments/{}", super::catalog_forms::urlencode(&id))),
        Err(e) => failed(
            &u,
            "Deployment",
            &e,
            html! { p { a href={ "/ui/deployments/" (id) } { "Back to the deployment" } } },
        ),
    }
}
