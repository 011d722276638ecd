//! The builder: turns a baseline build and replacement code into a signed,
//! cumulative hotpatch for that exact baseline build-id.
//!
//! Today it packs a hand-written replacement object ([`pack`]): it reads the
//! baseline to fill in the build-id, each replaced function's size and the hash
//! of its original bytes, and refuses what could never be applied. Diffing two
//! object builds function by function to produce the payload automatically
//! will live here too (the builder issue).

mod pack;
pub mod regalloc;

pub use pack::{BuildError, PackRequest, Replacement, manifest_for, parse_replacement};
pub use regalloc::{IpaRa, ipa_ra};
