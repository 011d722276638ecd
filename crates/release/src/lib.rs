//! The release model, shared by the agent and the control plane so that both give
//! the same answer: the release calendar, the classification rules, and the offer
//! decision for a machine.

pub mod classification;

pub use classification::Classification;
