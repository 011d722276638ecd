//! Applying a verified hotpatch to a process, and rolling one back.
//!
//! Order (DESIGN.md "The transition"): everything is parsed, resolved, checked
//! and linked first; the region is mapped; only then are threads stopped, for
//! the stack check and the site writes alone.

use crate::callback::{self, CallbackProblem};
use crate::error::EngineError;
use crate::mapping::{map_region, unmap_region};
use crate::memscan::{MemoryScanner, ScanReport};
use crate::modules::{LoadedModule, loaded_modules};
use crate::procfs::{self, ProcessMemory};
use crate::region::{self, PatchRecord, REGION_VERSION, RegionHeader, Retirement, SiteRecord};
use crate::resolve::Resolver;
use crate::retire;
use crate::scope;
use crate::shadow;
use crate::stack::{BusyRange, StackChecker};
use crate::status::{FoundRegion, find_regions};
use crate::tls::TlsResolver;
use crate::transition::{self, SiteWrite};
use hotpatch_elf::{SymbolKind, SymbolTable, TargetElf};
use hotpatch_format::{Machine, VerifiedPackage, sha256_hex};
use hotpatch_link::LinkPlan;
use serde::Serialize;
use std::collections::BTreeMap;
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

/// Where the old function of `f` starts in the baseline: the builder's proven
/// address when the manifest has one (a stripped baseline needs no symbols;
/// the bytes are still checked against the manifest's hash), else its symbol.
fn site_link_address(
    f: &hotpatch_format::FunctionPatch,
    symbols: &SymbolTable,
    elf: &TargetElf<'_>,
) -> Result<u64, EngineError> {
    let name = f.display_name();
    if f.size < hotpatch_format::MIN_SITE_SIZE {
        return Err(EngineError::SiteMismatch { function: name, problem: "is too small for a jump".into() });
    }
    if let Some(address) = f.address {
        if !elf.is_executable_range(address, f.size) {
            return Err(EngineError::SiteMismatch {
                function: name,
                problem: format!("0x{address:x} (+{} bytes) is not in an executable segment of the target", f.size),
            });
        }
        return Ok(address);
    }
    let sym = symbols.lookup(&f.symbol, f.file.as_deref()).map_err(|e| EngineError::Symbol(e.to_string()))?;
    if sym.kind != SymbolKind::Function {
        return Err(EngineError::SiteMismatch { function: name, problem: "is not a function in the target".into() });
    }
    if sym.size != f.size {
        return Err(EngineError::SiteMismatch {
            function: name,
            problem: format!("is {} bytes in the process's target, the manifest says {}", sym.size, f.size),
        });
    }
    Ok(sym.address)
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
    apply_inner(pid, package, opts).map_err(|e| exited_meanwhile(pid, e))
}

fn apply_inner(pid: i32, package: &VerifiedPackage, opts: &ApplyOptions) -> Result<ApplyReport, EngineError> {
    let started = Instant::now();
    let manifest = &package.manifest;
    if manifest.target.machine != Machine::X86_64 || !cfg!(target_arch = "x86_64") {
        return Err(EngineError::UnsupportedMachine(manifest.target.machine.to_string()));
    }
    let (maps, mem) = open(pid)?;
    let modules = loaded_modules(pid, &maps);
    let target: &LoadedModule =
        modules.iter().find(|m| m.build_id_hex() == manifest.target.build_id).ok_or_else(|| {
            EngineError::TargetNotMapped {
                pid,
                build_id: manifest.target.build_id.clone(),
                file_name: manifest.target.file_name.clone(),
            }
        })?;
    let data = target.read_file()?;
    let elf = TargetElf::parse(&data).map_err(|e| EngineError::Symbol(format!("{}: {e}", target.path)))?;
    let bias = target
        .bias(&elf)
        .ok_or_else(|| EngineError::Symbol(format!("{}: cannot tell where it is loaded", target.path)))?;
    let debug = debug_file(&elf);
    let debug_elf = debug.as_deref().and_then(|d| TargetElf::parse(d).ok());
    let symbols = SymbolTable::from_target(&elf, debug_elf.as_ref());

    // What is applied already to this target, and whether this level may replace it.
    let regions = find_regions(pid, &maps, &mem)?;
    let previous = regions
        .iter()
        .map(|r| &r.header)
        .filter(|h| h.record.build_id == manifest.target.build_id && h.record.retired.is_none())
        .max_by_key(|h| h.record.level);
    if let Some(prev) = previous
        && prev.record.level >= manifest.level
    {
        return Err(EngineError::LevelNotHigher {
            patch_id: prev.record.patch_id.clone(),
            applied: prev.record.level,
            offered: manifest.level,
        });
    }
    if let Some(prev) = previous {
        retire::check_cap(pid, &regions, prev)?;
    }
    let previous_sites: BTreeMap<u64, &SiteRecord> =
        previous.map(|p| p.sites.iter().map(|s| (s.address, s)).collect()).unwrap_or_default();

    // Resolve and check every site against the manifest before anything is written.
    struct Site {
        name: String,
        symbol: String,
        file: Option<String>,
        address: u64,
        size: u64,
        replacement_symbol: String,
        original: Vec<u8>,
        current: Vec<u8>,
    }
    let mut sites = Vec::new();
    for f in &manifest.functions {
        let name = f.display_name();
        let link_address = site_link_address(f, &symbols, &elf)?;
        let address = bias.wrapping_add(link_address);
        let bytes = mem
            .read_vec(address, f.size as usize)
            .map_err(|e| EngineError::proc_access(pid, &format!("read {name}"), e))?;
        let current = bytes[..5].to_vec();
        // A site patched by the previous level holds our jump; the baseline's
        // bytes are in that region's header.
        let mut baseline_bytes = bytes.clone();
        if let Some(prev) = previous_sites.get(&address) {
            let jump = hex::decode(&prev.jump).unwrap_or_default();
            if current != jump {
                return Err(EngineError::SiteMismatch {
                    function: name,
                    problem: "was changed by something else since the previous level was applied".into(),
                });
            }
            let orig = hex::decode(&prev.original).unwrap_or_default();
            baseline_bytes[..orig.len()].copy_from_slice(&orig);
        }
        let hash = sha256_hex(&baseline_bytes);
        if hash != f.original_sha256 {
            return Err(EngineError::SiteMismatch {
                function: name,
                problem: format!(
                    "bytes in memory do not match the baseline (sha256 {}, manifest expects {}): modified, or another build",
                    &hash[..16],
                    &f.original_sha256[..16.min(f.original_sha256.len())]
                ),
            });
        }
        sites.push(Site {
            name,
            symbol: f.symbol.clone(),
            file: f.file.clone(),
            address,
            size: f.size,
            replacement_symbol: f.replacement.clone(),
            original: baseline_bytes[..5].to_vec(),
            current,
        });
    }

    // Lay out and link the payload next to the target.
    let mut header = RegionHeader {
        version: REGION_VERSION,
        record: PatchRecord {
            patch_id: manifest.patch_id.clone(),
            level: manifest.level,
            build_id: manifest.target.build_id.clone(),
            target_file: manifest.target.file_name.clone(),
            classification: manifest.classification.to_string(),
            cves: manifest.cves.clone(),
            key_id: package.key_id.clone(),
            region_start: 0,
            region_size: 0,
            applied_at: 0,
            retired: None,
        },
        sites: sites
            .iter()
            .map(|s| SiteRecord {
                symbol: s.symbol.clone(),
                file: s.file.clone(),
                address: s.address,
                size: s.size,
                replacement: 0,
                original: hex::encode(&s.original),
                jump: hex::encode([0u8; 5]),
            })
            .collect(),
        shadow: None,
        callbacks: BTreeMap::new(),
        eh_frame: None,
    };
    let header_len = region::header_reserve(&header);
    let plan = LinkPlan::new(&package.payload, header_len)?;
    let defined = plan.defined_functions();
    if let Some(missing) = sites.iter().find(|s| !defined.contains(&s.replacement_symbol)) {
        return Err(EngineError::Symbol(format!(
            "replacement {} is not defined in the payload",
            missing.replacement_symbol
        )));
    }
    let size = plan.region_size();
    let base = region::place(&maps, target.start, target.end, size)
        .ok_or_else(|| EngineError::NoRoom { size, target: target.path.clone() })?;
    let others = scope::lookup_scope(pid, &mem, &modules, target.inode);
    let mut resolver = Resolver::new(&symbols, bias, &others);
    resolver.run_resolvers_in(pid, &maps, &mem);
    resolver.bind_baseline(manifest.symbols.iter().map(|s| (s.name.clone(), s.address)));
    let mut resolved = BTreeMap::new();
    let mut unresolved = BTreeMap::new();
    for name in plan.undefined_symbols() {
        match resolver.resolve(&name) {
            Ok(addr) => {
                resolved.insert(name, addr);
            }
            Err(why) => {
                unresolved.insert(name, why);
            }
        }
    }
    let target_files: Vec<&[u8]> = std::iter::once(data.as_slice()).chain(debug.as_deref()).collect();
    let mut tls = TlsResolver::new(&mem, target, target_files, &others, scope::main_phdr(pid));
    tls.bind_baseline(manifest.symbols.iter().map(|s| (s.name.clone(), s.address)));
    let mut image = plan
        .link_with_tls(base, &mut |name| resolved.get(name).copied(), &mut |name| tls.resolve(name))
        .map_err(|e| match &e {
            hotpatch_link::LinkError::UndefinedSymbol(name) => match unresolved.get(name) {
                Some(why) => EngineError::Symbol(why.clone()),
                None => EngineError::Link(e),
            },
            _ => EngineError::Link(e),
        })?;

    let mut writes = Vec::new();
    for (site, record) in sites.iter().zip(header.sites.iter_mut()) {
        let replacement = *image.symbols.get(&site.replacement_symbol).ok_or_else(|| {
            EngineError::Symbol(format!("replacement {} has no address after linking", site.replacement_symbol))
        })?;
        let jump = region::jump(site.address, replacement)
            .ok_or_else(|| EngineError::NoRoom { size, target: target.path.clone() })?;
        record.replacement = replacement;
        record.jump = hex::encode(jump);
        writes.push(SiteWrite { address: site.address, old: site.current.clone(), new: jump.to_vec() });
    }
    // Sites the previous level patched that this one no longer does go back
    // to the baseline in the same transition.
    if let Some(prev) = previous {
        for s in prev.sites.iter().filter(|s| !sites.iter().any(|n| n.address == s.address)) {
            writes.push(SiteWrite {
                address: s.address,
                old: hex::decode(&s.jump).unwrap_or_default(),
                new: hex::decode(&s.original).unwrap_or_default(),
            });
        }
    }
    header.record.region_start = base;
    header.record.region_size = size;
    header.callbacks = callback::defined(&image.symbols);
    header.shadow = image.symbols.get(shadow::ROOT_SYMBOL).copied();
    header.eh_frame = image.eh_frame.as_ref().map(|r| (r.start, r.end));
    shadow::warn_if_dropped(previous, header.shadow);
    // The new level's shadow table goes live (adopting the replaced level's)
    // in the same stop, before the sites: a tracer killed between the writes
    // leaves either an unreachable region (repair unmaps it) or a half-switched
    // one with its table live (repair completes the sites).
    if let Some(root) = header.shadow {
        writes.insert(0, shadow::activation(root, previous));
    }
    header.record.applied_at = now_unix();
    // The replaced level is retired in the same stop, after its sites switch.
    if let Some(prev) = previous {
        let retirement = Retirement { at: header.record.applied_at, replaced_by_level: Some(manifest.level) };
        writes.push(retire::mark(pid, &maps, &mem, prev, retirement)?);
    }
    let encoded = header.encode();
    if encoded.len() as u64 > header_len || image.bytes.len() < encoded.len() {
        return Err(EngineError::BadRegion { addr: base, problem: "header larger than reserved".into() });
    }
    image.bytes[..encoded.len()].copy_from_slice(&encoded);

    // Unwind tables are loaded before anything changes, so that a failure
    // here also leaves the process untouched.
    let mut checker = StackChecker::new(&maps, &modules, &mem);
    let mut busy: Vec<BusyRange> =
        sites.iter().map(|s| BusyRange { range: s.address..s.address + s.size, name: s.name.clone() }).collect();
    if let Some(prev) = previous {
        busy.push(BusyRange { range: prev.range(), name: format!("the replacement code of {}", prev.record.patch_id) });
    }
    checker.memory = MemoryScanner::for_process(pid, &maps, &modules, &mem, &busy, opts.scan_memory)?;

    map_region(pid, &maps, &mem, &image, header_len, &manifest.patch_id)?;
    // The pre-apply callback runs in the mapped region before anything
    // switches; its refusal unmaps the region like any other failure.
    let outcome = callback::pre(pid, &maps, &mem, &header, callback::PRE_APPLY, "apply")
        .and_then(|()| transition::prepare(&mem, &writes))
        .and_then(|()| transition::run(pid, &mem, &mut checker, &busy, &writes, opts.timeout));
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            let maps_now = procfs::maps(pid).unwrap_or_else(|_| maps.clone());
            if let Err(undo) = unmap_region(pid, &maps_now, &mem, base, size) {
                tracing::warn!(error = %undo, "could not unmap the unused patch region");
            }
            return Err(e);
        }
    };
    // The replaced level's region stays mapped (retired): a stack the check
    // cannot see may still return into it.
    let callback_problem = callback::post(pid, &mem, &header, callback::POST_APPLY);
    let replaced = previous.map(|p| ReplacedPatch {
        patch_id: p.record.patch_id.clone(),
        level: p.record.level,
        retired_region: p.record.region_start,
    });
    Ok(ApplyReport {
        pid,
        patch_id: manifest.patch_id.clone(),
        level: manifest.level,
        target: target.path.clone(),
        build_id: manifest.target.build_id.clone(),
        region_start: base,
        region_size: size,
        functions: sites.iter().map(|s| s.name.clone()).collect(),
        replaced,
        pause_us: report.pause_us,
        threads: report.threads,
        retries: report.retries,
        fallback_scans: report.fallback_scans,
        memory_scan: checker.memory.as_ref().map(|s| s.last),
        total_ms: started.elapsed().as_millis() as u64,
        callback_problem,
    })
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
