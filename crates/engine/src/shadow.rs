//! Shadow variables: the side table a hotpatch keeps state in (include/
//! hotpatch.h). Its code is the runtime the builder links into the payload
//! (crates/build/runtime/shadow.c); the engine only connects the table:
//!
//! - the root is found by its symbol after linking and recorded in the region
//!   header (`shadow`), so later runs find it from the process alone;
//! - the root's `activation` word is written in the transition's stop, after
//!   the stack check, with the sites: 1 (a table of its own) or the root of
//!   the level being replaced, whose table the runtime adopts on first use
//!   (that region is retired, never unmapped, so its arena stays valid).
//!
//! Until activation the runtime answers NULL, so a pre-apply callback, or a
//! refused apply, never touches the live level's table.

use crate::procfs::ProcessMemory;
use crate::region::RegionHeader;
use crate::transition::SiteWrite;
use serde::Serialize;

/// The runtime's root, by name in the payload.
pub const ROOT_SYMBOL: &str = "hotpatch_shadow_root";
/// `"HPSHADOW"`, the root's first word.
const ROOT_MAGIC: u64 = 0x574f_4441_4853_5048;
const ROOT_VERSION: u32 = 1;
/// Offsets in the root (struct root of shadow.c).
const VERSION_OFFSET: u64 = 8;
const ACTIVATION_OFFSET: u64 = 16;
const FORWARD_OFFSET: u64 = 24;
const LIVE_COUNT_OFFSET: u64 = 48;
/// Activation value of a table that adopts nothing.
const OWN_TABLE: u64 = 1;
/// Bounds the walk along `forward` links (each one a retired level).
const MAX_FORWARDS: usize = 64;

/// The writes, in the transition's stop, that make `root` (in the new
/// region) the live table: adopting the table of `previous` when it has one.
pub fn activation(root: u64, previous: Option<&RegionHeader>) -> SiteWrite {
    let adopt = previous.and_then(|p| p.shadow.filter(|r| p.range().contains(r)));
    let value = adopt.unwrap_or(OWN_TABLE);
    SiteWrite { address: root + ACTIVATION_OFFSET, old: 0u64.to_le_bytes().to_vec(), new: value.to_le_bytes().to_vec() }
}

/// Says so when the level being replaced keeps shadow variables that the
/// new one, not using the API, will not adopt (they are dropped with it).
pub fn warn_if_dropped(previous: Option<&RegionHeader>, new_root: Option<u64>) {
    if let Some(prev) = previous
        && prev.shadow.is_some()
        && new_root.is_none()
    {
        tracing::warn!(
            patch_id = %prev.record.patch_id,
            level = prev.record.level,
            "the replaced level's shadow variables are dropped: the new level does not use shadow variables"
        );
    }
}

/// How much a live table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShadowUsage {
    /// Objects with shadow data attached.
    pub objects: u64,
    /// Bytes of shadow data attached.
    pub bytes: u64,
    /// Whether the table is live (activated by a transition).
    pub live: bool,
}

/// What the table a region's root leads to holds, read from the process
/// (following `forward` to the level that adopted it). `None`: no root, or
/// what is there is not a root (the process may write its own memory).
pub fn usage(mem: &ProcessMemory, header: &RegionHeader) -> Option<ShadowUsage> {
    let mut root = header.shadow?;
    for _ in 0..MAX_FORWARDS {
        let word = |offset: u64| -> Option<u64> {
            let bytes = mem.read_vec(root + offset, 8).ok()?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        if word(0)? != ROOT_MAGIC || word(VERSION_OFFSET)? as u32 != ROOT_VERSION {
            return None;
        }
        let activation = word(ACTIVATION_OFFSET)?;
        match word(FORWARD_OFFSET)? {
            // Not used since it went live: the table is still its predecessor's.
            0 if activation > OWN_TABLE => root = activation,
            0 => {
                return Some(ShadowUsage {
                    objects: word(LIVE_COUNT_OFFSET)?,
                    bytes: word(LIVE_COUNT_OFFSET + 8)?,
                    live: activation != 0,
                });
            }
            next => root = next,
        }
    }
    None
}

/// The shadow variables of every applied (not retired) hotpatch of process
/// `pid` that uses them, by patch id.
pub fn usage_in(pid: i32) -> Result<Vec<(String, ShadowUsage)>, crate::EngineError> {
    let maps = crate::procfs::maps(pid).map_err(|e| crate::EngineError::proc_access(pid, "read maps", e))?;
    let mem = ProcessMemory::open(pid, false).map_err(|e| crate::EngineError::proc_access(pid, "open memory", e))?;
    let regions = crate::status::find_regions(pid, &maps, &mem)?;
    Ok(regions
        .iter()
        .filter(|r| r.header.record.retired.is_none())
        .filter_map(|r| Some((r.header.record.patch_id.clone(), usage(&mem, &r.header)?)))
        .collect())
}
