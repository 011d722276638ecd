//! What every handler shares: the database and the publisher keys the server trusts.
//! Nothing here holds fleet state, so any number of replicas can serve one database.

use std::sync::Arc;

use hotpatch_format::TrustStore;

use crate::db::Db;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub trust: Arc<TrustStore>,
    /// Browsers reach this server over HTTPS (it serves TLS itself), so the session
    /// cookie carries `Secure` and is never sent over plain HTTP.
    pub secure_cookies: bool,
    /// This replica's request figures (latency, check-ins) for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
}
