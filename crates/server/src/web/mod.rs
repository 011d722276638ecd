//! The web UI: server-rendered HTML pages under `/ui`, no JavaScript at all, so
//! the Content-Security-Policy forbids scripts outright. Read-only: changes go
//! through the API, which keeps the UI free of cross-site request forgery.

pub mod html;
pub mod pages;
pub mod session;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Redirect;
use axum::routing::get;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    let ui = Router::new()
        .route("/ui/", get(pages::overview_page))
        .route("/ui/machines", get(pages::machines_page))
        .route("/ui/machines/{id}", get(pages::machine_page))
        .route("/ui/catalog", get(pages::catalog_page))
        .route("/ui/deployments", get(pages::deployments_page))
        .route("/ui/compliance", get(pages::compliance_page))
        .route("/ui/billing", get(pages::billing_page))
        .route("/ui/audit", get(pages::audit_page))
        .route("/ui/login", get(session::login_form).post(session::login_with_token))
        .route("/ui/login/{code}", get(session::login_with_link))
        .route("/ui/logout", get(session::logout))
        .layer(axum::middleware::map_response(security_headers));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .merge(ui)
}

async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
