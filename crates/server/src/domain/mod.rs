//! The control plane's rules, apart from how they are reached: the HTTP API
//! (`api/`), the web pages (`web/`) and the check-in all call these modules, and
//! these modules call only the store (`db`, `audit`) and the pure crates, so the
//! arrows run one way: http -> domain -> store.

pub mod coverage;
pub mod exceeded;
