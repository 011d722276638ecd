//! The web UI: server-rendered HTML pages, no JavaScript.

use axum::Router;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
}
