//! The steps of an apply that read or change the process, around a
//! [`TargetPlan`](crate::plan::TargetPlan): what is applied already, the
//! sites' bytes in memory, the layout (bias, scope, placement), the writes
//! of the switch, then mapping the region and the transition.

use crate::callback;
use crate::error::EngineError;
use crate::mapping::{map_region, unmap_region};
use crate::memscan::MemoryScanner;
use crate::modules::{LoadedModule, loaded_modules};
use crate::plan::{Bindings, Linked, TargetPlan};
use crate::plan_cache::{self, Digest32, PlanCache};
use crate::procfs::{self, Mapping, ProcessMemory};
use crate::region::{self, RegionHeader, Retirement, SiteRecord};
use crate::retire;
use crate::scope;
use crate::shadow;
use crate::stack::{BusyRange, StackChecker};
use crate::status::FoundRegion;
use crate::tls::TlsResolver;
use crate::transition::{self, SiteWrite, TransitionReport};
use hotpatch_format::{Manifest, VerifiedPackage, sha256_hex};
use hotpatch_link::{LinkedImage, TlsSymbol};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A process as an apply reads it before anything is written.
pub struct Process {
    pub pid: i32,
    pub maps: Vec<Mapping>,
    pub mem: ProcessMemory,
    pub modules: Vec<LoadedModule>,
}

impl Process {
    pub fn open(pid: i32) -> Result<Process, EngineError> {
        let maps = procfs::maps(pid).map_err(|e| EngineError::proc_access(pid, "read maps", e))?;
        let mem = ProcessMemory::open(pid, true).map_err(|e| EngineError::proc_access(pid, "open memory", e))?;
        let modules = loaded_modules(pid, &maps);
        Ok(Process { pid, maps, mem, modules })
    }

    /// The mapping of the manifest's target, by build-id.
    pub fn target(&self, manifest: &Manifest) -> Result<&LoadedModule, EngineError> {
        self.modules.iter().find(|m| m.build_id_hex() == manifest.target.build_id).ok_or_else(|| {
            EngineError::TargetNotMapped {
                pid: self.pid,
                build_id: manifest.target.build_id.clone(),
                file_name: manifest.target.file_name.clone(),
            }
        })
    }
}

/// The level of this target applied already (not retired), if any, after
/// checking that `manifest`'s level may replace it.
pub fn previous_level<'r>(
    pid: i32,
    regions: &'r [FoundRegion],
    manifest: &Manifest,
) -> Result<Option<&'r RegionHeader>, EngineError> {
    let previous = regions
        .iter()
        .map(|r| &r.header)
        .filter(|h| h.record.build_id == manifest.target.build_id && h.record.retired.is_none())
        .max_by_key(|h| h.record.level);
    let Some(prev) = previous else { return Ok(None) };
    if prev.record.level >= manifest.level {
        return Err(EngineError::LevelNotHigher {
            patch_id: prev.record.patch_id.clone(),
            applied: prev.record.level,
            offered: manifest.level,
        });
    }
    retire::check_cap(pid, regions, prev)?;
    Ok(Some(prev))
}

/// One site's first bytes as found in memory, and as the baseline has them.
pub struct CheckedSite {
    pub address: u64,
    pub current: Vec<u8>,
    pub original: Vec<u8>,
}

/// Reads every site and checks its bytes against the manifest's hash (a
/// site the previous level patched with its original bytes put back).
pub fn check_sites(
    process: &Process,
    plan: &TargetPlan,
    bias: u64,
    previous: Option<&RegionHeader>,
) -> Result<Vec<CheckedSite>, EngineError> {
    let previous_sites: BTreeMap<u64, &SiteRecord> =
        previous.map(|p| p.sites.iter().map(|s| (s.address, s)).collect()).unwrap_or_default();
    let mut checked = Vec::new();
    for site in &plan.sites {
        let address = bias.wrapping_add(site.link_address);
        let bytes = process
            .mem
            .read_vec(address, site.size as usize)
            .map_err(|e| EngineError::proc_access(process.pid, &format!("read {}", site.name), e))?;
        let current = bytes[..5].to_vec();
        let mut baseline = bytes;
        if let Some(prev) = previous_sites.get(&address) {
            if current != hex::decode(&prev.jump).unwrap_or_default() {
                return Err(EngineError::SiteMismatch {
                    function: site.name.clone(),
                    problem: "was changed by something else since the previous level was applied".into(),
                });
            }
            let orig = hex::decode(&prev.original).unwrap_or_default();
            baseline[..orig.len()].copy_from_slice(&orig);
        }
        let hash = sha256_hex(&baseline);
        if hash != site.original_sha256 {
            return Err(EngineError::SiteMismatch {
                function: site.name.clone(),
                problem: format!(
                    "bytes in memory do not match the baseline (sha256 {}, manifest expects {}): modified, or another build",
                    &hash[..16],
                    &site.original_sha256[..16.min(site.original_sha256.len())]
                ),
            });
        }
        checked.push(CheckedSite { address, current, original: baseline[..5].to_vec() });
    }
    Ok(checked)
}

/// Where the region goes: within reach of the whole target.
pub fn place(process: &Process, target: &LoadedModule, plan: &TargetPlan) -> Result<u64, EngineError> {
    let size = plan.region_size();
    region::place(&process.maps, target.start, target.end, size)
        .ok_or_else(|| EngineError::NoRoom { size, target: target.path.clone() })
}

/// The payload linked for this process's layout: bindings reused for the
/// same scope at the same addresses, the image for the same region address
/// too; thread-local variables are looked up in each process (their module
/// ids are read from it).
pub fn link(
    cache: &mut PlanCache,
    package: Digest32,
    plan: &TargetPlan,
    process: &Process,
    target: &LoadedModule,
    bias: u64,
    base: u64,
) -> Result<(Arc<Linked>, bool), EngineError> {
    let others = scope::lookup_scope(process.pid, &process.mem, &process.modules, target.inode);
    let bindings = cache.bindings((package, bias, plan_cache::scope_digest(&others)), || {
        let mut resolver = plan.resolver(bias, &others);
        resolver.run_resolvers_in(process.pid, &process.maps, &process.mem);
        resolver.bind_baseline(plan.baseline_symbols().iter().cloned());
        Bindings::resolve(plan, &mut resolver)
    });
    let tls = tls_facts(plan, process, target, &others);
    let key = (package, bias, base, bindings.digest(), plan_cache::tls_digest(&tls));
    cache.linked(key, || plan.link_at(base, bias, &bindings, &tls))
}

fn tls_facts(
    plan: &TargetPlan,
    process: &Process,
    target: &LoadedModule,
    others: &[LoadedModule],
) -> BTreeMap<String, Result<TlsSymbol, String>> {
    let names = plan.tls_symbols();
    if names.is_empty() {
        return BTreeMap::new();
    }
    let mut tls = TlsResolver::new(&process.mem, target, plan.files(), others, scope::main_phdr(process.pid));
    tls.bind_baseline(plan.baseline_symbols().iter().cloned());
    names.into_iter().map(|n| (n.clone(), tls.resolve(&n))).collect()
}

/// The region header of this apply and the writes of its switch, in order:
/// the shadow table's activation, the sites, the sites the previous level
/// patched that this one does not (back to the baseline), the previous
/// level's retirement mark.
#[allow(clippy::too_many_arguments)]
pub fn switch_writes(
    process: &Process,
    package: &VerifiedPackage,
    plan: &TargetPlan,
    linked: &Linked,
    sites: &[CheckedSite],
    base: u64,
    previous: Option<&RegionHeader>,
    now: u64,
) -> Result<(RegionHeader, Vec<SiteWrite>), EngineError> {
    let mut header = crate::plan::header_template(package, &plan.sites);
    let mut writes = Vec::new();
    for ((record, site), jump) in header.sites.iter_mut().zip(sites).zip(&linked.jumps) {
        record.address = site.address;
        record.replacement = jump.replacement;
        record.original = hex::encode(&site.original);
        record.jump = hex::encode(jump.jump);
        writes.push(SiteWrite { address: site.address, old: site.current.clone(), new: jump.jump.to_vec() });
    }
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
    header.record.region_size = plan.region_size();
    header.callbacks = linked.callbacks.clone();
    header.shadow = linked.shadow;
    header.eh_frame = linked.image.eh_frame.as_ref().map(|r| (r.start, r.end));
    shadow::warn_if_dropped(previous, header.shadow);
    // The new level's shadow table goes live (adopting the replaced level's)
    // in the same stop, before the sites: a tracer killed between the writes
    // leaves either an unreachable region (repair unmaps it) or a half-switched
    // one with its table live (repair completes the sites).
    if let Some(root) = header.shadow {
        writes.insert(0, shadow::activation(root, previous));
    }
    header.record.applied_at = now;
    // The replaced level is retired in the same stop, after its sites switch.
    if let Some(prev) = previous {
        let retirement = Retirement { at: now, replaced_by_level: Some(package.manifest.level) };
        writes.push(retire::mark(process.pid, &process.maps, &process.mem, prev, retirement)?);
    }
    Ok((header, writes))
}

/// The linked image with this apply's header in its first pages.
pub fn image_with_header(linked: &Linked, header: &RegionHeader, header_len: u64) -> Result<LinkedImage, EngineError> {
    let encoded = header.encode();
    if encoded.len() as u64 > header_len || linked.image.bytes.len() < encoded.len() {
        return Err(EngineError::BadRegion { addr: linked.image.base, problem: "header larger than reserved".into() });
    }
    let mut image = linked.image.clone();
    image.bytes[..encoded.len()].copy_from_slice(&encoded);
    Ok(image)
}

/// What is busy during the switch: the functions replaced and, on an
/// upgrade, the replaced level's code.
pub fn busy_ranges(plan: &TargetPlan, sites: &[CheckedSite], previous: Option<&RegionHeader>) -> Vec<BusyRange> {
    let mut busy: Vec<BusyRange> = plan
        .sites
        .iter()
        .zip(sites)
        .map(|(p, s)| BusyRange { range: s.address..s.address + p.size, name: p.name.clone() })
        .collect();
    if let Some(prev) = previous {
        busy.push(BusyRange { range: prev.range(), name: format!("the replacement code of {}", prev.record.patch_id) });
    }
    busy
}

/// Maps the region, runs the pre-apply callback and the transition; any
/// failure unmaps the region again (it never became reachable).
#[allow(clippy::too_many_arguments)]
pub fn map_and_switch(
    process: &Process,
    image: &LinkedImage,
    header: &RegionHeader,
    header_len: u64,
    writes: &[SiteWrite],
    checker: &mut StackChecker,
    busy: &[BusyRange],
    timeout: Duration,
) -> Result<TransitionReport, EngineError> {
    let (pid, maps, mem) = (process.pid, &process.maps, &process.mem);
    map_region(pid, maps, mem, image, header_len, &header.record.patch_id)?;
    // The pre-apply callback runs in the mapped region before anything
    // switches; its refusal unmaps the region like any other failure.
    let outcome = callback::pre(pid, maps, mem, header, callback::PRE_APPLY, "apply")
        .and_then(|()| transition::prepare(mem, writes))
        .and_then(|()| transition::run(pid, mem, checker, busy, writes, timeout));
    if outcome.is_err() {
        let maps_now = procfs::maps(pid).unwrap_or_else(|_| maps.clone());
        if let Err(undo) = unmap_region(pid, &maps_now, mem, image.base, image.bytes.len() as u64) {
            tracing::warn!(error = %undo, "could not unmap the unused patch region");
        }
    }
    outcome
}

/// The stack checker of this apply, unwind tables and memory scan loaded
/// before anything changes so that a failure here leaves the process untouched.
pub fn checker(process: &Process, busy: &[BusyRange], scan_memory: bool) -> Result<StackChecker, EngineError> {
    let mut checker = StackChecker::new(&process.maps, &process.modules, &process.mem);
    checker.memory =
        MemoryScanner::for_process(process.pid, &process.maps, &process.modules, &process.mem, busy, scan_memory)?;
    Ok(checker)
}
