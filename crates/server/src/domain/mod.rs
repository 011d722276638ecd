//! The control plane's rules, apart from how they are reached: the HTTP API
//! (`api/`), the web pages (`web/`) and the check-in all call these modules, and
//! these modules call only the store (`db`, `audit`) and the pure crates, so the
//! arrows run one way: http -> domain -> store.

pub mod calendar;
pub mod catalog;
pub mod compliance;
pub mod coverage;
pub mod credentials;
pub mod entitlement;
pub mod exceeded;
pub mod holds;
pub mod metering;
pub mod names;
pub mod processes;
pub mod rollout;
pub mod signed_documents;
pub mod targeting;
pub mod work_flags;
