//! The plan of an apply: what can be known without touching the process.
//!
//! Two layers, so that one hotpatch applied to many processes does the
//! expensive work once:
//! - [`TargetPlan`], once per (hotpatch, target build-id): the target's
//!   symbols (its file and debug file read once), each site's link-time
//!   address, the payload laid out ([`LinkPlan`]) and the region header's size.
//!   Pure: made from the package and the target's bytes alone.
//! - [`Linked`], once per layout: the image linked at a region address for a
//!   load bias and the addresses the payload binds to ([`Bindings`]). Two
//!   processes with the same layout (forks, no ASLR, the same library at the
//!   same address) share it; where only addresses differ, the same
//!   [`TargetPlan`] is linked again, which is a copy and a relocation pass.

use crate::error::EngineError;
use crate::modules::LoadedModule;
use crate::region::{self, PatchRecord, REGION_VERSION, RegionHeader, SiteRecord};
use crate::resolve::Resolver;
use hotpatch_elf::{SymbolKind, SymbolTable, TargetElf};
use hotpatch_format::{FunctionPatch, VerifiedPackage};
use hotpatch_link::{LinkPlan, LinkedImage, TlsSymbol};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One site as the plan knows it: where the old function is in the target's
/// file (link-time), and what replaces it.
#[derive(Debug, Clone)]
pub struct PlannedSite {
    pub name: String,
    pub symbol: String,
    pub file: Option<String>,
    pub link_address: u64,
    pub size: u64,
    pub replacement: String,
    pub original_sha256: String,
}

/// Everything of an apply that depends on the hotpatch and the target's
/// build alone.
#[derive(Debug)]
pub struct TargetPlan {
    pub build_id: String,
    /// The target's file name, for messages.
    target_file: String,
    /// Page-aligned file offset and link address of the first `PT_LOAD`,
    /// which give a process's load bias.
    first_load: Option<(u64, u64)>,
    /// The target's file and its debug file: thread-local variables are
    /// looked up in them (per process, as their module ids are).
    files: Vec<Vec<u8>>,
    symbols: SymbolTable,
    /// Names the builder bound to link-time addresses of the target.
    baseline: Vec<(String, u64)>,
    pub sites: Vec<PlannedSite>,
    link: LinkPlan,
    header_len: u64,
}

impl TargetPlan {
    /// Plans `package` for the target whose file is `data` (and debug file
    /// `debug`, for a stripped target): sites located, payload laid out.
    pub fn new(package: &VerifiedPackage, data: Vec<u8>, debug: Option<Vec<u8>>) -> Result<TargetPlan, EngineError> {
        let (first_load, symbols, sites) = {
            let elf = TargetElf::parse(&data)
                .map_err(|e| EngineError::Symbol(format!("{}: {e}", package.manifest.target.file_name)))?;
            let debug_elf = debug.as_deref().and_then(|d| TargetElf::parse(d).ok());
            let symbols = SymbolTable::from_target(&elf, debug_elf.as_ref());
            let sites = locate_sites(&package.manifest.functions, &symbols, &elf)?;
            let first_load = elf.load_segments().first().map(|s| (s.offset & !0xfff, s.vaddr & !0xfff));
            (first_load, symbols, sites)
        };
        let header_len = region::header_reserve(&header_template(package, &sites));
        let link = LinkPlan::new(&package.payload, header_len)?;
        let defined = link.defined_functions();
        if let Some(missing) = sites.iter().find(|s| !defined.contains(&s.replacement)) {
            return Err(EngineError::Symbol(format!(
                "replacement {} is not defined in the payload",
                missing.replacement
            )));
        }
        let files = std::iter::once(data).chain(debug).collect();
        Ok(TargetPlan {
            build_id: package.manifest.target.build_id.clone(),
            target_file: package.manifest.target.file_name.clone(),
            first_load,
            files,
            symbols,
            baseline: package.manifest.symbols.iter().map(|s| (s.name.clone(), s.address)).collect(),
            sites,
            link,
            header_len,
        })
    }

    /// Where `module` (a mapping of this target) is loaded: run-time minus link-time address.
    pub fn bias(&self, module: &LoadedModule) -> Result<u64, EngineError> {
        let found = self.first_load.and_then(|(offset, vaddr)| {
            let map = module.mappings.iter().find(|m| m.offset == offset)?;
            Some(map.start.wrapping_sub(vaddr))
        });
        found.ok_or_else(|| EngineError::Symbol(format!("{}: cannot tell where it is loaded", module.path)))
    }

    pub fn region_size(&self) -> u64 {
        self.link.region_size()
    }

    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Names the payload binds to by address (not thread-local ones).
    pub fn undefined_symbols(&self) -> Vec<String> {
        self.link.undefined_symbols()
    }

    /// Thread-local variables of the process the payload uses.
    pub fn tls_symbols(&self) -> Vec<String> {
        self.link.tls_symbols()
    }

    /// Names the builder bound to link-time addresses in the target.
    pub fn baseline_symbols(&self) -> &[(String, u64)] {
        &self.baseline
    }

    /// The target file's bytes, then its debug file's.
    pub fn files(&self) -> Vec<&[u8]> {
        self.files.iter().map(Vec::as_slice).collect()
    }

    /// A resolver of the payload's names for a process that loads the
    /// target at `bias` and searches `others` after it.
    pub fn resolver<'a>(&'a self, bias: u64, others: &'a [LoadedModule]) -> Resolver<'a> {
        Resolver::new(&self.symbols, bias, others)
    }

    /// Links the payload at `base` for a target loaded at `bias`.
    pub fn link_at(
        &self,
        base: u64,
        bias: u64,
        bindings: &Bindings,
        tls: &BTreeMap<String, Result<TlsSymbol, String>>,
    ) -> Result<Linked, EngineError> {
        let image = self
            .link
            .link_with_tls(base, &mut |name| bindings.resolved.get(name).copied(), &mut |name| {
                tls.get(name).cloned().unwrap_or_else(|| Err(format!("{name} was not looked up")))
            })
            .map_err(|e| match &e {
                hotpatch_link::LinkError::UndefinedSymbol(name) => match bindings.unresolved.get(name) {
                    Some(why) => EngineError::Symbol(why.clone()),
                    None => EngineError::Link(e),
                },
                _ => EngineError::Link(e),
            })?;
        let mut jumps = Vec::new();
        for site in &self.sites {
            let replacement = *image.symbols.get(&site.replacement).ok_or_else(|| {
                EngineError::Symbol(format!("replacement {} has no address after linking", site.replacement))
            })?;
            let address = bias.wrapping_add(site.link_address);
            let jump = region::jump(address, replacement)
                .ok_or_else(|| EngineError::NoRoom { size: self.region_size(), target: self.target_file.clone() })?;
            jumps.push(SiteJump { address, replacement, jump });
        }
        Ok(Linked {
            callbacks: crate::callback::defined(&image.symbols),
            shadow: image.symbols.get(crate::shadow::ROOT_SYMBOL).copied(),
            image,
            jumps,
        })
    }
}

/// A site's jump as linked for one layout.
#[derive(Debug, Clone, Copy)]
pub struct SiteJump {
    /// Run-time address of the site.
    pub address: u64,
    pub replacement: u64,
    pub jump: [u8; 5],
}

/// The payload linked for one layout: its bytes (header pages still zero)
/// and each site's jump, in [`TargetPlan::sites`] order.
#[derive(Debug, Clone)]
pub struct Linked {
    pub image: LinkedImage,
    pub jumps: Vec<SiteJump>,
    pub callbacks: BTreeMap<String, u64>,
    pub shadow: Option<u64>,
}

/// What the payload's undefined names resolve to in one process, or why not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    pub resolved: BTreeMap<String, u64>,
    pub unresolved: BTreeMap<String, String>,
}

impl Bindings {
    /// Resolves every undefined name of `plan` with `resolver`.
    pub fn resolve(plan: &TargetPlan, resolver: &mut Resolver<'_>) -> Bindings {
        let mut out = Bindings::default();
        for name in plan.undefined_symbols() {
            match resolver.resolve(&name) {
                Ok(addr) => {
                    out.resolved.insert(name, addr);
                }
                Err(why) => {
                    out.unresolved.insert(name, why);
                }
            }
        }
        out
    }

    /// A digest of what is bound where (a key for a linked image).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (name, addr) in &self.resolved {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(addr.to_le_bytes());
        }
        for name in self.unresolved.keys() {
            h.update(name.as_bytes());
            h.update([1]);
        }
        h.finalize().into()
    }
}

/// The region header of `package` before placement: sites at `sites` with
/// addresses, jumps and originals filled in by the apply.
pub fn header_template(package: &VerifiedPackage, sites: &[PlannedSite]) -> RegionHeader {
    let manifest = &package.manifest;
    RegionHeader {
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
                address: 0,
                size: s.size,
                replacement: 0,
                original: hex::encode([0u8; 5]),
                jump: hex::encode([0u8; 5]),
            })
            .collect(),
        shadow: None,
        callbacks: BTreeMap::new(),
        eh_frame: None,
    }
}

fn locate_sites(
    functions: &[FunctionPatch],
    symbols: &SymbolTable,
    elf: &TargetElf<'_>,
) -> Result<Vec<PlannedSite>, EngineError> {
    functions
        .iter()
        .map(|f| {
            Ok(PlannedSite {
                name: f.display_name(),
                symbol: f.symbol.clone(),
                file: f.file.clone(),
                link_address: site_link_address(f, symbols, elf)?,
                size: f.size,
                replacement: f.replacement.clone(),
                original_sha256: f.original_sha256.clone(),
            })
        })
        .collect()
}

/// Where the old function of `f` starts in the baseline: the builder's proven
/// address when the manifest has one (a stripped baseline needs no symbols;
/// the bytes are still checked against the manifest's hash), else its symbol.
fn site_link_address(f: &FunctionPatch, symbols: &SymbolTable, elf: &TargetElf<'_>) -> Result<u64, EngineError> {
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
