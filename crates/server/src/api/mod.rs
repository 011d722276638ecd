//! The JSON HTTP API under `/api/v1`, documented in `/openapi.json`.

pub mod access;
pub mod billing;
pub mod calendar;
pub mod catalog;
pub mod checkin;
pub mod compliance;
pub mod deploy;
pub mod fleet;
pub mod json;
pub mod queries;
pub mod signed;
pub mod tiers;
pub mod tokens;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};

use crate::error::ApiError;
use crate::state::AppState;

/// JSON bodies are small; a whole package upload may be large.
pub const JSON_BODY_LIMIT: usize = 1024 * 1024;
pub const PACKAGE_BODY_LIMIT: usize = 64 * 1024 * 1024;

const OPENAPI: &str = include_str!("../../openapi.json");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/healthz", get(health))
        .route("/api/v1/whoami", get(access::whoami))
        .route("/api/v1/users", get(access::list_users).post(access::create_user))
        .route("/api/v1/users/{name}", put(access::set_user_role).delete(access::remove_user))
        .route("/api/v1/tokens", get(tokens::list_tokens).post(tokens::create_token))
        .route("/api/v1/tokens/{id}", delete(tokens::revoke_token))
        .route("/api/v1/sessions", get(tokens::list_sessions))
        .route("/api/v1/sessions/{id}", delete(tokens::revoke_session))
        .route("/api/v1/ui-links", post(tokens::create_login_link))
        .route("/api/v1/audit", get(access::list_audit))
        .route("/api/v1/enrollment-tokens", post(fleet::create_enrollment_token))
        .route("/api/v1/agent/enroll", post(fleet::enroll))
        .route("/api/v1/agent/checkin", post(checkin::check_in))
        .route("/api/v1/machines", get(fleet::list_machines))
        .route("/api/v1/machines/{id}", get(fleet::machine_detail))
        .route("/api/v1/machines/{id}/tags", put(fleet::set_tags))
        .route("/api/v1/machines/{id}/revoke", post(fleet::revoke_machine))
        .route(
            "/api/v1/hotpatches",
            get(catalog::list_hotpatches)
                .post(catalog::upload_hotpatch)
                .layer(DefaultBodyLimit::max(PACKAGE_BODY_LIMIT)),
        )
        .route("/api/v1/hotpatches/{patch_id}/promote", post(tiers::promote))
        .route("/api/v1/tiers", get(tiers::get_tiers).put(tiers::set_tiers))
        .route("/api/v1/machines/{id}/tier", put(tiers::set_machine_tier))
        .route("/api/v1/pins", get(tiers::list_pins).post(tiers::add_pin))
        .route("/api/v1/pins/{id}", delete(tiers::remove_pin))
        .route("/api/v1/artifacts/{sha256}", get(catalog::artifact))
        .route(
            "/api/v1/catalog/metadata",
            get(signed::get_metadata).put(signed::put_metadata).layer(DefaultBodyLimit::max(signed::BODY_LIMIT)),
        )
        .route("/api/v1/catalog/revocations", get(signed::list_revocations).post(signed::post_revocation))
        .route("/api/v1/catalog/keys", get(signed::list_keys).post(signed::post_keys))
        .route("/api/v1/trusted-keys", get(crate::trust::api::list_keys).post(crate::trust::api::add_key))
        .route("/api/v1/trusted-keys/{key_id}", delete(crate::trust::api::revoke_key))
        .route("/api/v1/baselines", get(catalog::list_baselines).post(catalog::create_baseline))
        .route("/api/v1/calendar", get(calendar::get_calendar).put(calendar::set_calendar))
        .route("/api/v1/maintenance-windows", get(deploy::list_windows).post(deploy::create_window))
        .route("/api/v1/deployments", get(deploy::list_deployments).post(deploy::create_deployment))
        .route("/api/v1/deployments/{id}", get(deploy::get_deployment))
        .route("/api/v1/deployments/{id}/cancel", post(deploy::cancel_deployment))
        .route("/api/v1/deployments/{id}/resume", post(deploy::resume_deployment))
        .route("/api/v1/deployments/{id}/pause", post(deploy::pause_deployment))
        .route("/api/v1/queries", get(queries::list_queries).post(queries::create_query))
        .route("/api/v1/queries/{name}", get(queries::get_query).delete(queries::delete_query))
        .route("/api/v1/compliance/overview", get(compliance::get_overview))
        .route("/api/v1/compliance/machines", get(compliance::by_machine))
        .route("/api/v1/compliance/targets", get(compliance::by_target))
        .route("/api/v1/compliance/cves", get(compliance::by_cve))
        .route("/api/v1/monitoring/summary", get(crate::monitoring::summary))
        .route("/api/v1/billing", get(billing::get_billing))
        .route("/api/v1/billing/subscription", put(billing::set_subscription))
        .route("/api/v1/billing/invoices", get(billing::list_invoices))
        .route("/api/v1/billing/invoices/{month}", get(billing::get_invoice))
}

/// Ready means the database answers, so a load balancer drops a replica that lost it.
async fn health(axum::extract::State(st): axum::extract::State<AppState>) -> impl IntoResponse {
    match sqlx::query("SELECT 1").execute(&st.db.pool).await {
        Ok(_) => (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ok" }))).into_response(),
        Err(e) => ApiError::Database(e).into_response(),
    }
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}
