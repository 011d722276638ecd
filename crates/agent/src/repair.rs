//! `hotpatch repair` (also run when the agent starts): brings every process
//! back to "fully patched or untouched" after a tracer was killed mid-way, and
//! closes the journal's open intents with what the processes show.
//!
//! The processes are the record: each patch region's header lists its sites
//! with their original and jump bytes. A region none of whose sites lead to it
//! was mapped but never switched (or its level was replaced or rolled back
//! without the unmap): it is unmapped, after a stack check proves no thread is
//! inside it. A region whose sites are only partly switched is completed, the
//! same way a transition does it (stop, stack check, write, resume).
//!
//! A region no site leads to is retired instead (marked, left mapped) when it
//! was reachable once: an open rollback intent names it (a rollback killed
//! after its sites, before its mark; one killed among its sites is finished),
//! or a higher level of its target is switched (an upgrade killed before the
//! replaced level's mark). A memfd of a region left open in the process by an
//! apply killed before its `close` is closed.

use std::time::Duration;

use hotpatch_engine::procfs::{self, Mapping, ProcessMemory};
use hotpatch_engine::region::{RegionHeader, Retirement, is_region_mapping};
use hotpatch_engine::stack::{BusyRange, StackChecker};
use hotpatch_engine::transition::{self, SiteWrite};
use hotpatch_engine::{EngineError, modules::loaded_modules};
use serde::Serialize;

use crate::journal::{self, Journal};

#[derive(Debug, Clone, Serialize)]
pub struct RegionRepair {
    pub pid: i32,
    pub comm: String,
    pub patch_id: String,
    pub level: u32,
    /// "completed", "unmapped" or "failed".
    pub action: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntentRepair {
    pub id: u64,
    pub op: String,
    pub pid: i32,
    pub patch_id: String,
    pub level: u32,
    /// What the process shows now.
    pub finding: String,
}

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub regions: Vec<RegionRepair>,
    pub intents: Vec<IntentRepair>,
    pub errors: Vec<String>,
}

impl RepairReport {
    pub fn fixed(&self) -> usize {
        self.regions.iter().filter(|r| r.action != "failed").count()
    }
}

/// A region of a process and how many of its sites hold its jump.
struct Found {
    header: RegionHeader,
    switched: Vec<bool>,
}

fn read_regions(maps: &[Mapping], mem: &ProcessMemory) -> Result<Vec<Found>, String> {
    let mut out = Vec::new();
    for m in maps.iter().filter(|m| is_region_mapping(m)) {
        let prefix = mem.read_vec(m.start, 12).map_err(|e| format!("read region at 0x{:x}: {e}", m.start))?;
        let len = RegionHeader::encoded_len(&prefix)?;
        let bytes = mem.read_vec(m.start, len).map_err(|e| format!("read region at 0x{:x}: {e}", m.start))?;
        let header = RegionHeader::decode(&bytes)?;
        if header.record.region_start != m.start {
            return Err(format!("region at 0x{:x}: header names another address", m.start));
        }
        let switched = header
            .sites
            .iter()
            .map(|s| {
                let jump = hex::decode(&s.jump).unwrap_or_default();
                mem.read_vec(s.address, jump.len()).is_ok_and(|now| now == jump)
            })
            .collect();
        out.push(Found { header, switched });
    }
    Ok(out)
}

/// What to repair and how patiently.
#[derive(Debug, Clone)]
pub struct RepairOptions {
    /// Only these processes (default: every process).
    pub pids: Option<Vec<i32>>,
    /// Regions written less than this long ago are left alone: an apply that
    /// does not take the machine lock (a program using the engine directly)
    /// may still be about to switch them.
    pub min_age: Duration,
    /// How long a stack check may wait for a thread to leave the code.
    pub timeout: Duration,
}

impl Default for RepairOptions {
    fn default() -> RepairOptions {
        RepairOptions { pids: None, min_age: Duration::from_secs(60), timeout: Duration::from_secs(10) }
    }
}

/// Repairs every process (or those named), then closes the journal's open intents.
pub fn repair(state_dir: &std::path::Path, opts: &RepairOptions) -> RepairReport {
    let mut report = RepairReport::default();
    let _lock = match crate::lock::exclusive() {
        Ok(l) => l,
        Err(e) => {
            report.errors.push(format!("cannot take the machine lock {}: {e}", crate::lock::LOCK_PATH));
            return report;
        }
    };
    let rollbacks = open_rollbacks(state_dir);
    let me = std::process::id() as i32;
    let pids = opts.pids.clone().unwrap_or_else(procfs::pids);
    for pid in pids.into_iter().filter(|&p| p != me) {
        let Ok(maps) = procfs::maps(pid) else { continue };
        if maps.iter().any(is_region_mapping) {
            repair_process(pid, opts, &rollbacks, &mut report);
        }
        close_memfds(pid, opts, &mut report);
    }
    if let Err(e) = close_intents(state_dir, &mut report) {
        report.errors.push(e);
    }
    report
}

/// Rollbacks the journal shows begun and not ended: (pid, start time, patch id).
fn open_rollbacks(state_dir: &std::path::Path) -> Vec<(i32, u64, String)> {
    if !state_dir.join(journal::JOURNAL).exists() {
        return Vec::new();
    }
    let open = journal::open_intents(state_dir).unwrap_or_default();
    open.into_iter().filter(|i| i.op == "rollback").map(|i| (i.pid, i.start_time, i.patch_id)).collect()
}

/// Closes the region memfds an apply killed between `memfd_create` and
/// `close` left open in the process (older than `min_age`: an apply without
/// the machine lock may be about to close its own).
fn close_memfds(pid: i32, opts: &RepairOptions, report: &mut RepairReport) {
    let fds = hotpatch_engine::mapping::leftover_memfds(pid, opts.min_age);
    if fds.is_empty() {
        return;
    }
    let comm = procfs::comm(pid);
    let closed = procfs::maps(pid).map_err(|e| format!("read maps: {e}")).and_then(|maps| {
        let mem = ProcessMemory::open(pid, true).map_err(|e| format!("open memory: {e}"))?;
        hotpatch_engine::mapping::close_memfds(pid, &maps, &mem, &fds).map_err(|e| e.to_string())
    });
    let fd_list = fds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let (action, detail) = match closed {
        Ok(_) => ("closed", format!("descriptor(s) {fd_list} of a patch region's memfd left open by a killed apply")),
        Err(e) => ("failed", format!("closing descriptor(s) {fd_list}: {e}")),
    };
    report.regions.push(RegionRepair { pid, comm, patch_id: String::new(), level: 0, action: action.into(), detail });
}

/// Why a region no site leads to must be retired, not unmapped: it was
/// reachable once (see the module comment).
fn retirement_due(f: &Found, found: &[Found], rolling_back: bool, now: u64) -> Option<Retirement> {
    if rolling_back {
        return Some(Retirement { at: now, replaced_by_level: None });
    }
    let r = &f.header.record;
    found
        .iter()
        .filter(|o| o.header.record.build_id == r.build_id && o.header.record.retired.is_none())
        .filter(|o| o.header.record.level > r.level && !o.switched.is_empty() && o.switched.iter().all(|&s| s))
        .map(|o| Retirement { at: now, replaced_by_level: Some(o.header.record.level) })
        .next()
}

fn repair_process(pid: i32, opts: &RepairOptions, rollbacks: &[(i32, u64, String)], report: &mut RepairReport) {
    let timeout = opts.timeout;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let settled = |f: &Found| now.saturating_sub(f.header.record.applied_at) >= opts.min_age.as_secs();
    let comm = procfs::comm(pid);
    let entry = |h: &RegionHeader, action: &str, detail: String| RegionRepair {
        pid,
        comm: comm.clone(),
        patch_id: h.record.patch_id.clone(),
        level: h.record.level,
        action: action.into(),
        detail,
    };
    let started = journal::start_time(pid);
    let rolling_back = |h: &RegionHeader| {
        rollbacks.iter().any(|(p, t, id)| *p == pid && Some(*t) == started && *id == h.record.patch_id)
    };
    // Half-switched regions first: completing one leaves the level it replaces unused.
    for pass in ["complete", "unmap"] {
        let (maps, mem, found) = match inspect(pid) {
            Ok(v) => v,
            Err(e) => return report.errors.push(format!("process {pid} ({comm}): {e}")),
        };
        // A retired region (replaced or rolled back) stays mapped on purpose:
        // a suspended stack may still return into it.
        for f in found.iter().filter(|f| settled(f) && f.header.record.retired.is_none()) {
            let n = f.switched.iter().filter(|&&s| s).count();
            let outcome = match pass {
                "complete" if n > 0 && n < f.switched.len() && rolling_back(&f.header) => {
                    finish_rollback(pid, &maps, &mem, f, now, timeout).map(|()| {
                        ("rolled back", format!("{n} of {} sites still led to it; restored them", f.switched.len()))
                    })
                }
                "complete" if n > 0 && n < f.switched.len() => {
                    complete(pid, &maps, &mem, f, &found, timeout).map(|()| {
                        ("completed", format!("{n} of {} sites were switched; switched the rest", f.switched.len()))
                    })
                }
                "unmap" if n == 0 => match retirement_due(f, &found, rolling_back(&f.header), now) {
                    Some(retirement) => retire(pid, &maps, &mem, &f.header, retirement, &[], timeout)
                        .map(|()| ("retired", retired_why(retirement))),
                    None => unmap_unused(pid, &maps, &mem, &f.header, timeout)
                        .map(|()| ("unmapped", "no site led to it (never switched)".to_string())),
                },
                _ => continue,
            };
            report.regions.push(match outcome {
                Ok((action, detail)) => entry(&f.header, action, detail),
                Err(e) => entry(&f.header, "failed", e.to_string()),
            });
        }
    }
}

fn inspect(pid: i32) -> Result<(Vec<Mapping>, ProcessMemory, Vec<Found>), String> {
    let maps = procfs::maps(pid).map_err(|e| format!("read maps: {e}"))?;
    let mem = ProcessMemory::open(pid, true).map_err(|e| format!("open memory: {e}"))?;
    let found = read_regions(&maps, &mem)?;
    Ok((maps, mem, found))
}

/// Switches the sites of `f` that do not yet hold its jump; each must hold the
/// baseline's bytes or the jump of another region of this process (a lower level).
fn complete(
    pid: i32,
    maps: &[Mapping],
    mem: &ProcessMemory,
    f: &Found,
    all: &[Found],
    timeout: Duration,
) -> Result<(), EngineError> {
    let mut writes = Vec::new();
    let mut busy = Vec::new();
    for (site, _) in f.header.sites.iter().zip(&f.switched).filter(|(_, s)| !**s) {
        let jump = hex::decode(&site.jump).unwrap_or_default();
        let now = mem
            .read_vec(site.address, jump.len())
            .map_err(|e| EngineError::Io { what: format!("read site {}", site.symbol), source: e })?;
        let original = hex::decode(&site.original).unwrap_or_default();
        let other = all.iter().find(|o| {
            o.header.sites.iter().any(|s| s.address == site.address && hex::decode(&s.jump).unwrap_or_default() == now)
        });
        if now != original && other.is_none() {
            return Err(EngineError::SiteMismatch {
                function: site.symbol.clone(),
                problem: "holds bytes of no known state; left as it is".into(),
            });
        }
        if let Some(o) = other {
            busy.push(BusyRange {
                range: o.header.range(),
                name: format!("the replacement code of {}", o.header.record.patch_id),
            });
        }
        busy.push(BusyRange { range: site.address..site.address + site.size, name: site.symbol.clone() });
        writes.push(SiteWrite { address: site.address, old: now, new: jump });
    }
    let modules = loaded_modules(pid, maps);
    let mut checker = StackChecker::new(maps, &modules, mem);
    transition::prepare(mem, &writes)?;
    transition::run(pid, mem, &mut checker, &busy, &writes, timeout).map(|_| ())
}

fn retired_why(r: Retirement) -> String {
    match r.replaced_by_level {
        Some(level) => format!("replaced by level {level}, whose sites are switched; marked retired (left mapped)"),
        None => "rolled back (its sites restored); marked retired (left mapped)".to_string(),
    }
}

/// Ends a rollback killed among its site writes: the sites still leading to
/// the region get their original bytes back, and the region is marked retired.
fn finish_rollback(
    pid: i32,
    maps: &[Mapping],
    mem: &ProcessMemory,
    f: &Found,
    now: u64,
    timeout: Duration,
) -> Result<(), EngineError> {
    let writes: Vec<SiteWrite> = f
        .header
        .sites
        .iter()
        .zip(&f.switched)
        .filter(|(_, s)| **s)
        .map(|(site, _)| SiteWrite {
            address: site.address,
            old: hex::decode(&site.jump).unwrap_or_default(),
            new: hex::decode(&site.original).unwrap_or_default(),
        })
        .collect();
    retire(pid, maps, mem, &f.header, Retirement { at: now, replaced_by_level: None }, &writes, timeout)
}

/// Writes `sites` (if any) and then `h`'s retirement mark in one transition,
/// with no thread inside the region (its code stays mapped).
fn retire(
    pid: i32,
    maps: &[Mapping],
    mem: &ProcessMemory,
    h: &RegionHeader,
    retirement: Retirement,
    sites: &[SiteWrite],
    timeout: Duration,
) -> Result<(), EngineError> {
    let mut writes = sites.to_vec();
    writes.push(hotpatch_engine::retire::mark(pid, maps, mem, h, retirement)?);
    let modules = loaded_modules(pid, maps);
    let mut checker = StackChecker::new(maps, &modules, mem);
    let busy = [BusyRange { range: h.range(), name: format!("the replacement code of {}", h.record.patch_id) }];
    transition::prepare(mem, &writes)?;
    transition::run(pid, mem, &mut checker, &busy, &writes, timeout).map(|_| ())
}

/// Unmaps a region nothing leads to, once no thread is inside it.
fn unmap_unused(
    pid: i32,
    maps: &[Mapping],
    mem: &ProcessMemory,
    h: &RegionHeader,
    timeout: Duration,
) -> Result<(), EngineError> {
    let modules = loaded_modules(pid, maps);
    let mut checker = StackChecker::new(maps, &modules, mem);
    let busy = [BusyRange { range: h.range(), name: format!("the replacement code of {}", h.record.patch_id) }];
    transition::run(pid, mem, &mut checker, &busy, &[], timeout)?;
    hotpatch_engine::mapping::unmap_region(pid, maps, mem, h.record.region_start, h.record.region_size)
}

/// Gives each open intent of the journal an outcome read from its process.
fn close_intents(state_dir: &std::path::Path, report: &mut RepairReport) -> Result<(), String> {
    if !state_dir.join(journal::JOURNAL).exists() {
        return Ok(());
    }
    let open = journal::open_intents(state_dir).map_err(|e| e.to_string())?;
    let mut j = Journal::open(state_dir).map_err(|e| e.to_string())?;
    for i in open {
        let (ok, finding) = if journal::start_time(i.pid) != Some(i.start_time) {
            (false, "the process has exited".to_string())
        } else {
            let active = hotpatch_engine::status(i.pid)
                .unwrap_or_default()
                .iter()
                .any(|a| a.active && a.record.patch_id == i.patch_id);
            match (i.op.as_str(), active) {
                ("apply", true) | ("rollback", false) => (true, format!("{} of {} is complete", i.op, i.patch_id)),
                _ => (false, format!("{} of {} did not happen; the process is untouched", i.op, i.patch_id)),
            }
        };
        j.outcome(i.id, ok, &format!("repair: {finding}")).map_err(|e| e.to_string())?;
        report.intents.push(IntentRepair {
            id: i.id,
            op: i.op,
            pid: i.pid,
            patch_id: i.patch_id,
            level: i.level,
            finding,
        });
    }
    j.compact(state_dir).map_err(|e| e.to_string())
}
