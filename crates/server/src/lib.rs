//! `hotpatch-server` owns the control plane: the catalog of baselines and signed
//! hotpatches, machine enrollment and check-ins, deployments with maintenance
//! windows and rings, compliance reports, metering and invoices, the audit log,
//! role-based access, the JSON API (`/openapi.json`) and the server-rendered web UI.
//!
//! All fleet state lives in the database (SQLite embedded, or PostgreSQL shared
//! by any number of replicas); a replica holds nothing that another needs.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod coverage;
pub mod db;
pub mod error;
pub mod holds;
pub mod limits;
pub mod metrics;
pub mod monitoring;
pub mod offer;
pub mod origin;
pub mod processes;
pub mod retention;
pub mod schema;
pub mod serve;
pub mod state;
pub mod tiers;
pub mod trust;
pub mod util;
pub mod web;
pub mod windows;
pub mod work_flags;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use hotpatch_format::TrustStore;

pub use db::{Backend, Db, DbError};
pub use state::AppState;

/// Opens the database (running migrations) and builds the shared state, with
/// cookies for plain HTTP; a server that serves TLS sets `secure_cookies`.
pub async fn open(database_url: &str, trust: TrustStore, max_connections: u32) -> Result<AppState, DbError> {
    let db = Db::connect(database_url, max_connections).await?;
    Ok(AppState { db, trust: Arc::new(trust), secure_cookies: false, metrics: Arc::default() })
}

/// The whole HTTP surface: API, OpenAPI document and web UI.
pub fn router(state: AppState) -> Router {
    api::routes()
        .merge(web::routes())
        .route("/metrics", axum::routing::get(monitoring::metrics))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn(origin::refuse_cross_origin))
        .layer(axum::middleware::from_fn(refuse_nul_in_uri))
        .layer(DefaultBodyLimit::max(api::JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// A NUL character (`%00`) in the path or query: path parameters and query values
/// reach the database as text, which PostgreSQL refuses with an error (SQLite
/// would store it); both refuse it here alike, with a 400.
async fn refuse_nul_in_uri(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = req.uri();
    let has_nul = |s: &str| s.as_bytes().windows(3).any(|w| w.eq_ignore_ascii_case(b"%00"));
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return api::json::nul_refused().into_response();
    }
    next.run(req).await
}
