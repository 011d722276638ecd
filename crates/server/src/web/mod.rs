//! The web UI: server-rendered HTML pages under `/ui`, no JavaScript at all, so
//! the Content-Security-Policy forbids scripts outright. Operators and admins
//! also act from it through plain HTML forms; every post must carry the
//! session's CSRF token and come from this origin (`csrf`), and goes through
//! the same handler, checks and audit entry as the API call it stands for.
//! Viewers see no forms, and the handlers refuse them anyway.

pub mod catalog_forms;
pub mod csrf;
pub mod deploy_forms;
pub mod deployment_page;
pub mod fleet_forms;
pub mod fleet_pages;
pub mod form;
pub mod keys;
pub mod machine_page;
pub mod machine_sections;
pub mod overview;
pub mod pages;
pub mod schedule_forms;
pub mod session;
pub mod tiers;
pub mod view;
pub mod work_sql;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::Redirect;
use axum::routing::{get, post};

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    let ui = Router::new()
        .route("/ui/", get(overview::overview_page))
        .route("/ui/machines", get(fleet_pages::machines_page))
        .route("/ui/machines/{id}", get(machine_page::machine_page))
        .route("/ui/catalog", get(pages::catalog_page))
        .route("/ui/deployments", get(pages::deployments_page).post(deploy_forms::create))
        .route("/ui/deployments/new", get(deploy_forms::new_page))
        .route("/ui/deployments/preview", post(deploy_forms::preview))
        .route("/ui/deployments/{id}", get(deployment_page::deployment_page))
        .route("/ui/deployments/{id}/{action}", post(deploy_forms::change_state))
        .route(
            "/ui/catalog/hotpatches",
            post(catalog_forms::upload).layer(DefaultBodyLimit::max(crate::api::PACKAGE_BODY_LIMIT)),
        )
        .route("/ui/catalog/baselines", post(catalog_forms::create_baseline))
        .route("/ui/enrollment-tokens", post(fleet_forms::create_enrollment_token))
        .route("/ui/machines/{id}/tags", post(fleet_forms::set_tags))
        .route("/ui/machines/{id}/revoke", post(fleet_forms::revoke))
        .route("/ui/maintenance-windows", post(schedule_forms::create_window))
        .route("/ui/queries", post(schedule_forms::create_query))
        .route("/ui/tiers", get(tiers::tiers_page).post(tiers::set_tiers))
        .route("/ui/hotpatches/{patch_id}/promote", post(tiers::promote))
        .route("/ui/pins", post(tiers::add_pin))
        .route("/ui/pins/{id}/remove", post(tiers::remove_pin))
        .route("/ui/machines/{id}/tier", post(tiers::set_machine_tier))
        .route("/ui/keys", get(keys::keys_page).post(keys::add))
        .route("/ui/keys/{id}/revoke", post(keys::revoke))
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
    // Not "no-referrer": under it browsers send `Origin: null` with every form
    // post, and the CSRF check could no longer tell our own forms from others'.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
