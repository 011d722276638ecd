//! Patch at exec: a process that has just started a program is stopped at the
//! executable's entry point, once the dynamic loader has mapped and relocated
//! every library it needs and run their constructors but before any code of
//! the executable runs, and held there while it is patched.
//!
//! - [`entry`]: catching a new process on its way to the entry point (return
//!   trampolines on the loader's own frames, never a trap), and holding it
//!   there, untraced, in a timed sleep that ends by itself should we die.
//! - [`needed`]: whether a new process will run a target at all: its
//!   executable, or a library of its `DT_NEEDED` closure resolved the way
//!   ld.so searches, named by build-id. Cheap (cached per file) and on the
//!   safe side (a doubt is "maybe").

pub mod entry;
pub mod needed;

pub use entry::{Abandon, Caught, HOLD, Held, Stage, catch, catch_abandoning};
pub use needed::{NeededCache, TargetMatch};
