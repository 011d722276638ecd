//! The builder: turns a baseline build and replacement code into a signed,
//! cumulative hotpatch for that exact baseline build-id.
//!
//! Two ways in: [`build_from_objects`] diffs an original and a fixed build
//! object by object ([`diff`]), proves the original is the baseline's code
//! ([`runpre`]), takes what the fix's new source files hold ([`added`]),
//! and writes the payload ([`payload`]) and manifest; [`pack`]
//! takes a hand-written replacement object instead.

pub mod added;
pub mod argregs;
pub mod baseline;
mod builder;
pub mod diff;
mod dwarf;
pub mod explain;
pub mod inlined;
pub mod objfile;
mod pack;
pub mod payload;
pub mod regalloc;
pub mod runpre;
pub mod runtime;
mod selection;
pub mod signature;
mod unwind;

pub use added::AddedObject;
pub use builder::{AsmChange, DiffBuildError, DiffBuildOutput, DiffBuildRequest, ObjectPair, build_from_objects};
pub use objfile::ObjectFile;
pub use pack::{BuildError, PackRequest, Replacement, check_undefined, manifest_for, parse_replacement};
pub use regalloc::{IpaRa, ipa_ra};
pub use runtime::{RuntimeError, with_runtime};
