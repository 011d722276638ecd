//! Applying a verified hotpatch to a process, and rolling one back.
//!
//! Order (DESIGN.md "The transition"): everything is parsed, resolved, checked
//! and linked first; the region is mapped; only then are threads stopped, for
//! the stack check and the site writes alone.

use crate::callback::{self, CallbackProblem};
use crate::error::EngineError;
use crate::execute::{self, Process};
use crate::memscan::{MemoryScanner, ScanReport};
use crate::modules::{LoadedModule, loaded_modules};
use crate::plan::TargetPlan;
use crate::plan_cache::{self, PlanCache, PlanUse};
use crate::procfs::{self, ProcessMemory};
use crate::region::{RegionHeader, Retirement};
use crate::retire;
use crate::stack::{BusyRange, StackChecker};
use crate::status::{FoundRegion, find_regions};
use crate::transition::{self, SiteWrite};
use hotpatch_elf::TargetElf;
use hotpatch_format::{Machine, VerifiedPackage};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How long to keep retrying while a thread is busy in a function being replaced.
    pub timeout: Duration,
    /// Also scan the process's writable memory for return addresses into
    /// busy code (user-level stacks: coroutines, fibers), inside the pause.
    pub scan_memory: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions { timeout: Duration::from_secs(10), scan_memory: false }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplacedPatch {
    pub patch_id: String,
    pub level: u32,
    /// Start of its region, now retired (still mapped).
    pub retired_region: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub pid: i32,
    pub patch_id: String,
    pub level: u32,
    pub target: String,
    pub build_id: String,
    pub region_start: u64,
    pub region_size: u64,
    /// Functions switched to their replacements.
    pub functions: Vec<String>,
    /// The lower level this one replaced, if any.
    pub replaced: Option<ReplacedPatch>,
    pub pause_us: u64,
    pub threads: usize,
    pub retries: u32,
    pub fallback_scans: u32,
    /// The memory scan of the attempt that switched (`scan_memory`, or the
    /// user-level stacks the process declares).
    pub memory_scan: Option<ScanReport>,
    /// Wall time of the whole apply, preparation included.
    pub total_ms: u64,
    /// A post-apply callback that did not complete (the hotpatch is applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_problem: Option<CallbackProblem>,
    /// Whether the plan and the linked image were reused from an earlier apply.
    pub plan: PlanUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub pid: i32,
    pub patch_id: String,
    pub level: u32,
    /// Start of its region, now retired (still mapped).
    pub retired_region: u64,
    pub functions: Vec<String>,
    pub pause_us: u64,
    pub threads: usize,
    pub retries: u32,
    pub fallback_scans: u32,
    /// The memory scan of the attempt that switched (`scan_memory`, or the
    /// user-level stacks the process declares).
    pub memory_scan: Option<ScanReport>,
    pub total_ms: u64,
    /// A post-rollback callback that did not complete (the rollback is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_problem: Option<CallbackProblem>,
}

fn open(pid: i32) -> Result<(Vec<procfs::Mapping>, ProcessMemory), EngineError> {
    let maps = procfs::maps(pid).map_err(|e| EngineError::proc_access(pid, "read maps", e))?;
    let mem = ProcessMemory::open(pid, true).map_err(|e| EngineError::proc_access(pid, "open memory", e))?;
    Ok((maps, mem))
}

/// Environment variable naming more debug roots (`:`-separated), searched in
/// order before `/usr/lib/debug`, each laid out as `ROOT/.build-id/ab/cdef....debug`.
pub const DEBUG_DIRS_ENV: &str = "HOTPATCH_DEBUG_DIRS";

/// The debug roots searched for a stripped target's debug file: those of
/// [`DEBUG_DIRS_ENV`], then `/usr/lib/debug`.
pub fn debug_roots() -> Vec<std::path::PathBuf> {
    let extra = std::env::var_os(DEBUG_DIRS_ENV).unwrap_or_default();
    std::env::split_paths(&extra)
        .filter(|p| !p.as_os_str().is_empty())
        .chain(std::iter::once(std::path::PathBuf::from(hotpatch_elf::DEFAULT_DEBUG_ROOT)))
        .collect()
}

/// The separate debug file of a target without `.symtab`: the first one found
/// by build-id under the debug roots whose own build-id is the target's (a
/// debug file of another build would name wrong addresses).
pub fn debug_file(elf: &TargetElf<'_>) -> Option<Vec<u8>> {
    if elf.has_symtab() {
        return None;
    }
    let build_id = elf.build_id().ok()??;
    debug_roots().iter().find_map(|root| {
        let path = hotpatch_elf::debug_file_path_in(root, build_id)?;
        let data = std::fs::read(&path).ok()?;
        match TargetElf::parse(&data).ok()?.build_id() {
            Ok(Some(id)) if id == build_id => Some(data),
            _ => {
                tracing::warn!(path = %path.display(), "debug file is of another build; ignored");
                None
            }
        }
    })
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How long an error that may stem from the process exiting waits for the
/// exit to show before it is reported as it is.
const EXIT_GRACE: Duration = Duration::from_millis(250);

/// A step that failed because the process exited meanwhile (its memory read
/// as empty, its threads vanished under ptrace, its maps went blank) reports
/// `ProcessExited`, not whatever that step saw.
fn exited_meanwhile(pid: i32, err: EngineError) -> EngineError {
    let may_stem_from_exit = match &err {
        // About the package or the engine's own answer, never about the process.
        EngineError::ProcessExited(_)
        | EngineError::Busy { .. }
        | EngineError::LevelNotHigher { .. }
        | EngineError::RetiredCap { .. }
        | EngineError::ScanTooLarge { .. }
        | EngineError::UnsupportedMachine(_)
        | EngineError::Link(_) => return err,
        // What the process's exit looks like to the step that meets it.
        EngineError::Io { .. }
        | EngineError::Ptrace { .. }
        | EngineError::Inject { .. }
        | EngineError::PermissionDenied { .. }
        | EngineError::Traced { .. } => true,
        // Refusals read from the process (its maps went blank, its files
        // unreadable, its memory empty): checked once, without waiting, as they
        // are ordinary refusals far more often.
        EngineError::TargetNotMapped { .. }
        | EngineError::Symbol(_)
        | EngineError::SiteMismatch { .. }
        | EngineError::NoRoom { .. }
        | EngineError::NotApplied(_)
        | EngineError::UserStacks { .. }
        | EngineError::Callback { .. }
        | EngineError::BadRegion { .. } => false,
    };
    let end = Instant::now() + if may_stem_from_exit { EXIT_GRACE } else { Duration::ZERO };
    loop {
        if procfs::process_exiting(pid) {
            return EngineError::ProcessExited(pid);
        }
        if Instant::now() >= end {
            return err;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Applies `package` to process `pid`. A lower level of the same baseline
/// already applied is replaced in the same transition.
///
/// A process that exits while this runs gives `ProcessExited`, whatever step
/// noticed it; nothing of the engine stays attached to it.
pub fn apply(pid: i32, package: &VerifiedPackage, opts: &ApplyOptions) -> Result<ApplyReport, EngineError> {
    apply_planned(pid, package, opts, &mut PlanCache::new())
}

/// [`apply`], reusing the plans in `cache` that fit this process (same
/// hotpatch; same layout for the linked image) and keeping the ones it makes:
/// one cache serves every process a hotpatch is applied to.
pub fn apply_planned(
    pid: i32,
    package: &VerifiedPackage,
    opts: &ApplyOptions,
    cache: &mut PlanCache,
) -> Result<ApplyReport, EngineError> {
    apply_inner(pid, package, opts, cache).map_err(|e| exited_meanwhile(pid, e))
}

fn apply_inner(
    pid: i32,
    package: &VerifiedPackage,
    opts: &ApplyOptions,
    cache: &mut PlanCache,
) -> Result<ApplyReport, EngineError> {
    let started = Instant::now();
    let manifest = &package.manifest;
    if manifest.target.machine != Machine::X86_64 || !cfg!(target_arch = "x86_64") {
        return Err(EngineError::UnsupportedMachine(manifest.target.machine.to_string()));
    }
    // Read the process; plan (or reuse the plan of) the target.
    let process = Process::open(pid)?;
    let target = process.target(manifest)?;
    let key = plan_cache::package_digest(package);
    let (plan, plan_reused) = cache.plan(&key, || plan_target(package, target))?;
    let bias = plan.bias(target)?;
    // What is applied already, and the sites as they are in memory.
    let regions = find_regions(pid, &process.maps, &process.mem)?;
    let previous = execute::previous_level(pid, &regions, manifest)?;
    let sites = execute::check_sites(&process, &plan, bias, previous)?;
    // Link for this layout (or reuse the image of the same layout).
    let base = execute::place(&process, target, &plan)?;
    let (linked, link_reused) = execute::link(cache, key, &plan, &process, target, bias, base)?;
    let (header, writes) =
        execute::switch_writes(&process, package, &plan, &linked, &sites, base, previous, now_unix())?;
    let image = execute::image_with_header(&linked, &header, plan.header_len())?;
    // Map, stop, check stacks, switch, resume.
    let busy = execute::busy_ranges(&plan, &sites, previous);
    let mut checker = execute::checker(&process, &busy, opts.scan_memory)?;
    let report = execute::map_and_switch(
        &process,
        &image,
        &header,
        plan.header_len(),
        &writes,
        &mut checker,
        &busy,
        opts.timeout,
    )?;
    // The replaced level's region stays mapped (retired): a stack the check
    // cannot see may still return into it.
    let callback_problem = callback::post(pid, &process.mem, &header, callback::POST_APPLY);
    Ok(ApplyReport {
        pid,
        patch_id: manifest.patch_id.clone(),
        level: manifest.level,
        target: target.path.clone(),
        build_id: manifest.target.build_id.clone(),
        region_start: base,
        region_size: plan.region_size(),
        functions: plan.sites.iter().map(|s| s.name.clone()).collect(),
        replaced: previous.map(|p| ReplacedPatch {
            patch_id: p.record.patch_id.clone(),
            level: p.record.level,
            retired_region: p.record.region_start,
        }),
        pause_us: report.pause_us,
        threads: report.threads,
        retries: report.retries,
        fallback_scans: report.fallback_scans,
        memory_scan: checker.memory.as_ref().map(|s| s.last),
        total_ms: started.elapsed().as_millis() as u64,
        callback_problem,
        plan: PlanUse { plan_reused, link_reused },
    })
}

/// The target's plan, its file (and debug file) read from the process's own mapping.
fn plan_target(package: &VerifiedPackage, target: &LoadedModule) -> Result<TargetPlan, EngineError> {
    let data = target.read_file()?;
    let debug = TargetElf::parse(&data).ok().and_then(|elf| debug_file(&elf));
    TargetPlan::new(package, data, debug)
}

/// Rolls back `patch_id` (or the only hotpatch applied) in process `pid`:
/// restores the baseline bytes at every site and retires the region (it stays
/// mapped, marked retired in its header).
pub fn rollback(pid: i32, patch_id: Option<&str>, opts: &ApplyOptions) -> Result<RollbackReport, EngineError> {
    rollback_inner(pid, patch_id, opts).map_err(|e| exited_meanwhile(pid, e))
}

/// The region `rollback` is asked for: the one named, or the only one
/// applied. Retired regions are no longer applied.
fn rollback_choice<'r>(
    pid: i32,
    regions: &'r [FoundRegion],
    patch_id: Option<&str>,
) -> Result<&'r RegionHeader, EngineError> {
    let live: Vec<&RegionHeader> = regions.iter().map(|r| &r.header).filter(|h| h.record.retired.is_none()).collect();
    let applied = || live.iter().map(|h| h.record.patch_id.clone()).collect::<Vec<_>>().join(", ");
    match patch_id {
        Some(id) => live.iter().copied().find(|h| h.record.patch_id == id).ok_or_else(|| {
            let retired = regions.iter().any(|r| r.header.record.patch_id == id);
            EngineError::NotApplied(format!(
                "hotpatch {id} is not applied in process {pid}{} (applied: {})",
                if retired { " (its region is retired: rolled back or replaced already)" } else { "" },
                if live.is_empty() { "none".into() } else { applied() }
            ))
        }),
        None => match live.as_slice() {
            [] => Err(EngineError::NotApplied(format!("no hotpatch is applied in process {pid}"))),
            [one] => Ok(one),
            _ => Err(EngineError::NotApplied(format!(
                "several hotpatches are applied in process {pid} ({}); name the one to roll back",
                applied()
            ))),
        },
    }
}

fn rollback_inner(pid: i32, patch_id: Option<&str>, opts: &ApplyOptions) -> Result<RollbackReport, EngineError> {
    let started = Instant::now();
    let (maps, mem) = open(pid)?;
    let regions = find_regions(pid, &maps, &mem)?;
    let header = rollback_choice(pid, &regions, patch_id)?;
    retire::check_cap(pid, &regions, header)?;
    let mut writes = Vec::new();
    for s in &header.sites {
        let jump = hex::decode(&s.jump).unwrap_or_default();
        let now = mem.read_vec(s.address, jump.len()).map_err(|e| EngineError::proc_access(pid, "read site", e))?;
        if now != jump {
            return Err(EngineError::SiteMismatch {
                function: s.symbol.clone(),
                problem: "no longer holds this hotpatch's jump; refusing to restore over a change we did not make"
                    .into(),
            });
        }
        // Only ever restore inside an executable mapping of the process.
        if !maps.iter().any(|m| m.exec && m.contains(s.address) && m.contains(s.address + jump.len() as u64 - 1)) {
            return Err(EngineError::BadRegion {
                addr: header.record.region_start,
                problem: format!("site 0x{:x} is not in executable memory", s.address),
            });
        }
        writes.push(SiteWrite { address: s.address, old: jump, new: hex::decode(&s.original).unwrap_or_default() });
    }
    writes.push(retire::mark(pid, &maps, &mem, header, Retirement { at: now_unix(), replaced_by_level: None })?);
    callback::pre(pid, &maps, &mem, header, callback::PRE_ROLLBACK, "rollback")?;
    transition::prepare(&mem, &writes)?;
    let modules = loaded_modules(pid, &maps);
    let mut checker = StackChecker::new(&maps, &modules, &mem);
    let busy =
        [BusyRange { range: header.range(), name: format!("the replacement code of {}", header.record.patch_id) }];
    checker.memory = MemoryScanner::for_process(pid, &maps, &modules, &mem, &busy, opts.scan_memory)?;
    let report = transition::run(pid, &mem, &mut checker, &busy, &writes, opts.timeout)?;
    let callback_problem = callback::post(pid, &mem, header, callback::POST_ROLLBACK);
    // The region stays mapped (retired): a stack the check cannot see may
    // still return into it.
    Ok(RollbackReport {
        pid,
        patch_id: header.record.patch_id.clone(),
        level: header.record.level,
        retired_region: header.record.region_start,
        functions: header.sites.iter().map(|s| s.symbol.clone()).collect(),
        pause_us: report.pause_us,
        threads: report.threads,
        retries: report.retries,
        fallback_scans: report.fallback_scans,
        memory_scan: checker.memory.as_ref().map(|s| s.last),
        total_ms: started.elapsed().as_millis() as u64,
        callback_problem,
    })
}
