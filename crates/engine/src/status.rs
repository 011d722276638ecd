//! What is applied in a process, read from the process itself: the headers of
//! its patch regions and the bytes at their sites.

use crate::error::EngineError;
use crate::modules::loaded_modules;
use crate::procfs::{self, Mapping, ProcessMemory};
use crate::region::{PatchRecord, RegionHeader, is_region_mapping};
use serde::Serialize;

/// One hotpatch applied in one process.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedPatch {
    pub pid: i32,
    /// As the region's header records it (flat in JSON).
    #[serde(flatten)]
    pub record: PatchRecord,
    pub functions: Vec<String>,
    /// Not retired, and every site still holds the jump into this region.
    /// A retired region (`record.retired`) stays mapped but is not applied.
    pub active: bool,
}

/// A region found in a process, with its parsed header.
pub(crate) struct FoundRegion {
    pub header: RegionHeader,
}

pub(crate) fn find_regions(pid: i32, maps: &[Mapping], mem: &ProcessMemory) -> Result<Vec<FoundRegion>, EngineError> {
    let mut found = Vec::new();
    for m in maps.iter().filter(|m| is_region_mapping(m)) {
        let prefix = mem.read_vec(m.start, 12).map_err(|e| EngineError::proc_access(pid, "read patch region", e))?;
        let len =
            RegionHeader::encoded_len(&prefix).map_err(|problem| EngineError::BadRegion { addr: m.start, problem })?;
        let bytes = mem.read_vec(m.start, len).map_err(|e| EngineError::proc_access(pid, "read patch region", e))?;
        let header =
            RegionHeader::decode(&bytes).map_err(|problem| EngineError::BadRegion { addr: m.start, problem })?;
        if header.record.region_start != m.start {
            return Err(EngineError::BadRegion { addr: m.start, problem: "header names another address".into() });
        }
        found.push(FoundRegion { header });
    }
    Ok(found)
}

fn describe(pid: i32, mem: &ProcessMemory, r: &FoundRegion) -> AppliedPatch {
    let h = &r.header;
    let active = h.record.retired.is_none()
        && h.sites.iter().all(|s| {
            let jump = hex::decode(&s.jump).unwrap_or_default();
            mem.read_vec(s.address, jump.len()).is_ok_and(|now| now == jump)
        });
    AppliedPatch {
        pid,
        record: h.record.clone(),
        functions: h.sites.iter().map(|s| s.symbol.clone()).collect(),
        active,
    }
}

/// Every hotpatch region in process `pid`: applied ones and retired ones
/// (`record.retired` set, `active` false).
pub fn status(pid: i32) -> Result<Vec<AppliedPatch>, EngineError> {
    let maps = procfs::maps(pid).map_err(|e| EngineError::proc_access(pid, "read maps", e))?;
    if !maps.iter().any(is_region_mapping) {
        return Ok(Vec::new());
    }
    let mem = ProcessMemory::open(pid, false).map_err(|e| EngineError::proc_access(pid, "open memory", e))?;
    Ok(find_regions(pid, &maps, &mem)?.iter().map(|r| describe(pid, &mem, r)).collect())
}

/// Retired regions among `patches` (of any target): how many, how large.
pub fn retired_total(patches: &[AppliedPatch]) -> crate::retire::RetiredTotal {
    patches.iter().filter(|p| p.record.retired.is_some()).fold(Default::default(), |t, p| crate::retire::RetiredTotal {
        regions: t.regions + 1,
        bytes: t.bytes.saturating_add(p.record.region_size),
    })
}

/// Every hotpatch applied in every process this user can read.
pub fn status_all() -> Vec<AppliedPatch> {
    procfs::pids().into_iter().filter_map(|pid| status(pid).ok()).flatten().collect()
}

/// A target (ELF object) mapped by a running process, with what is applied to it.
#[derive(Debug, Clone, Serialize)]
pub struct RunningTarget {
    pub pid: i32,
    pub comm: String,
    pub build_id: String,
    pub path: String,
    pub applied: Vec<AppliedPatch>,
}

/// Every target of every running process: what an agent reports and scans.
pub fn running_targets() -> Vec<RunningTarget> {
    let mut out = Vec::new();
    for pid in procfs::pids() {
        if pid as u32 == std::process::id() {
            continue;
        }
        let Ok(maps) = procfs::maps(pid) else { continue };
        let applied = status(pid).unwrap_or_default();
        let comm = procfs::comm(pid);
        for module in loaded_modules(pid, &maps) {
            let Some(build_id) = module.build_id.as_ref().map(hex::encode) else { continue };
            out.push(RunningTarget {
                pid,
                comm: comm.clone(),
                applied: applied.iter().filter(|a| a.record.build_id == build_id).cloned().collect(),
                build_id,
                path: module.path.clone(),
            });
        }
    }
    out
}

/// Processes that map a target with this build-id (hex).
pub fn processes_with_target(build_id: &str) -> Vec<i32> {
    procfs::pids()
        .into_iter()
        .filter(|&pid| {
            procfs::maps(pid)
                .map(|maps| loaded_modules(pid, &maps).iter().any(|m| m.build_id_hex() == build_id))
                .unwrap_or(false)
        })
        .collect()
}
