//! The linked result handed to the engine.

use std::collections::BTreeMap;

/// Memory protection of one segment of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prot {
    /// Read-only data, the GOT (and the engine's header page).
    Read,
    /// Code and call stubs.
    ReadExec,
    /// Writable data and bss.
    ReadWrite,
}

/// A page-aligned stretch of the region with one protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Offset from the region start; a multiple of the page size.
    pub offset: u64,
    /// Length in bytes; a multiple of the page size.
    pub len: u64,
    pub prot: Prot,
}

/// A payload linked to run at `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedImage {
    pub base: u64,
    /// Exactly [`crate::LinkPlan::region_size`] bytes; the header reserve is zero.
    pub bytes: Vec<u8>,
    /// In address order, covering the whole region after the header reserve.
    pub segments: Vec<Segment>,
    /// Final absolute address of every named symbol defined in the payload.
    /// Where a name is defined twice (local symbols of the same name), the
    /// global definition wins, otherwise the first in symbol table order.
    pub symbols: BTreeMap<String, u64>,
    /// Absolute `[start, end)` of the relocated `.eh_frame` unwind tables,
    /// if the payload has any; four zero bytes (the list terminator) follow
    /// `end`, so `start` can be given to `__register_frame` as it is, and the
    /// range to a stack unwinder for frames inside the region.
    pub eh_frame: Option<std::ops::Range<u64>>,
}
