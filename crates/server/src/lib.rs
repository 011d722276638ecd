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
pub mod offer;
pub mod schema;
pub mod serve;
pub mod state;
pub mod trust;
pub mod util;
pub mod web;
pub mod windows;

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
    Ok(AppState { db, trust: Arc::new(trust), secure_cookies: false })
}

/// The whole HTTP surface: API, OpenAPI document and web UI.
pub fn router(state: AppState) -> Router {
    api::routes()
        .merge(web::routes())
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(api::JSON_BODY_LIMIT))
        .with_state(state)
}
