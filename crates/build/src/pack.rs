//! Packing a hand-written replacement object against a baseline.

use hotpatch_elf::{SymbolKind, SymbolTable, TargetElf};
use hotpatch_format::{
    Classification, FORMAT_VERSION, FunctionPatch, MIN_SITE_SIZE, Machine, Manifest, Target, check_payload, sha256_hex,
};
use object::{Object, ObjectSymbol, SymbolKind as ObjKind};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("baseline {name}: {source}")]
    Baseline { name: String, source: hotpatch_elf::ElfError },
    #[error("baseline {name} is for ELF machine {machine}, which hotpatch does not support (x86_64, aarch64)")]
    UnsupportedMachine { name: String, machine: u16 },
    #[error("baseline {name}: {source}")]
    Symbol { name: String, source: hotpatch_elf::LookupError },
    #[error("{symbol} in the baseline is not a function (it is {kind})")]
    NotAFunction { symbol: String, kind: String },
    #[error("{symbol} is {size} bytes, too small for the {min}-byte jump a patch site needs")]
    TooSmall { symbol: String, size: u64, min: u64 },
    #[error("the bytes of {symbol} (0x{address:x}, {size} bytes) are not in an executable segment of the baseline")]
    NotInText { symbol: String, address: u64, size: u64 },
    #[error("replacement {0} is not defined as a function in the payload object")]
    ReplacementMissing(String),
    #[error("payload: {0}")]
    Payload(#[from] hotpatch_format::FormatError),
    #[error("--replace {0:?} is not of the form OLD=NEW or FILE:OLD=NEW")]
    BadReplacement(String),
    #[error("no --replace given: a hotpatch replaces at least one function")]
    NoReplacements,
    #[error(
        "{symbol} was also inlined by gcc into {callers}, which would keep running the old code: replace those \
         too, or let `hotpatch build` find every such caller from the source fix"
    )]
    InlinedInto { symbol: String, callers: String },
    #[error("the payload refers to {name}, which neither the baseline nor the libraries it needs ({libraries}) define")]
    Unresolved { name: String, libraries: String },
    #[error(
        "baseline {name} was compiled with gcc's -fipa-ra (unit {unit}: {producer:?}): its callers may keep values in \
         registers the original functions leave alone, and a replacement may clobber them. Rebuild the baseline with \
         -fno-ipa-ra, or pass --allow-ipa-ra if every replacement clobbers no more registers than the function it replaces"
    )]
    IpaRa { name: String, unit: String, producer: String },
}

/// One old function and its replacement, as given with `--replace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub old: String,
    /// Source file of a file-local `old` whose name is not unique.
    pub file: Option<String>,
    pub new: String,
}

/// Parses `OLD=NEW` or `FILE:OLD=NEW`.
pub fn parse_replacement(spec: &str) -> Result<Replacement, BuildError> {
    let bad = || BuildError::BadReplacement(spec.to_owned());
    let (old, new) = spec.split_once('=').ok_or_else(bad)?;
    let (file, old) = match old.rsplit_once(':') {
        Some((file, old)) => (Some(file.to_owned()), old),
        None => (None, old),
    };
    if old.is_empty() || new.is_empty() || new.contains(['=', ':']) || file.as_deref() == Some("") {
        return Err(bad());
    }
    Ok(Replacement { old: old.to_owned(), file, new: new.to_owned() })
}

/// Everything `hotpatch pack` needs besides the signing key.
pub struct PackRequest<'a> {
    pub baseline: &'a [u8],
    /// File name of the baseline, recorded as a hint.
    pub baseline_name: String,
    /// Separate debug file for a stripped baseline, if the caller found one.
    pub debug_file: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub replacements: Vec<Replacement>,
    pub patch_id: Option<String>,
    pub product: String,
    pub level: u32,
    pub classification: Classification,
    pub cves: Vec<String>,
    pub description: String,
    pub created: String,
    /// Pack even though the baseline's DWARF says it was built with `-fipa-ra`
    /// (see [`crate::regalloc`]).
    pub allow_ipa_ra: bool,
}

/// Builds the manifest for a pack request, checking every replacement against
/// the baseline and the payload. The package is then `Package::build(manifest, payload, key)`.
pub fn manifest_for(req: &PackRequest<'_>) -> Result<Manifest, BuildError> {
    let name = req.baseline_name.clone();
    let baseline =
        TargetElf::parse(req.baseline).map_err(|source| BuildError::Baseline { name: name.clone(), source })?;
    let build_id = baseline.build_id_hex().map_err(|source| BuildError::Baseline { name: name.clone(), source })?;
    let machine = Machine::from_elf(baseline.e_machine())
        .ok_or(BuildError::UnsupportedMachine { name: name.clone(), machine: baseline.e_machine() })?;
    check_payload(req.payload, machine)?;
    if req.replacements.is_empty() {
        return Err(BuildError::NoReplacements);
    }
    let ipa_ra = crate::ipa_ra(req.baseline, req.debug_file);
    if let crate::IpaRa::On { unit, producer } = &ipa_ra
        && !req.allow_ipa_ra
    {
        return Err(BuildError::IpaRa { name, unit: unit.clone(), producer: producer.clone() });
    }
    let debug = req.debug_file.and_then(|d| TargetElf::parse(d).ok());
    let symbols = SymbolTable::from_target(&baseline, debug.as_ref());
    let payload_functions = payload_functions(req.payload)?;
    refuse_inlined(req)?;

    let mut functions = Vec::new();
    for r in &req.replacements {
        let sym = symbols
            .lookup(&r.old, r.file.as_deref())
            .map_err(|source| BuildError::Symbol { name: name.clone(), source })?;
        let display = match &r.file {
            Some(f) => format!("{f}:{}", r.old),
            None => r.old.clone(),
        };
        if sym.kind != SymbolKind::Function {
            return Err(BuildError::NotAFunction { symbol: display, kind: format!("{:?}", sym.kind).to_lowercase() });
        }
        if sym.size < MIN_SITE_SIZE {
            return Err(BuildError::TooSmall { symbol: display, size: sym.size, min: MIN_SITE_SIZE });
        }
        let bytes = baseline
            .bytes_at(sym.address, sym.size)
            .filter(|_| baseline.is_executable_range(sym.address, sym.size))
            .ok_or(BuildError::NotInText { symbol: display.clone(), address: sym.address, size: sym.size })?;
        if !payload_functions.iter().any(|f| f == &r.new) {
            return Err(BuildError::ReplacementMissing(r.new.clone()));
        }
        // Record the file only where the name alone would be ambiguous, so the
        // engine resolves exactly what was checked here.
        let file = if symbols.needs_file(&r.old) { sym.file.clone().or_else(|| r.file.clone()) } else { None };
        functions.push(FunctionPatch {
            symbol: r.old.clone(),
            file,
            size: sym.size,
            original_sha256: sha256_hex(bytes),
            replacement: r.new.clone(),
            address: None,
        });
    }

    let about = About {
        patch_id: req.patch_id.as_deref(),
        product: &req.product,
        level: req.level,
        classification: req.classification,
        cves: &req.cves,
        description: &req.description,
        created: &req.created,
    };
    let manifest = unsigned_manifest(&about, Target { build_id, file_name: name, machine }, functions, Vec::new());
    manifest.validate()?;
    // Said only once the pack succeeds, so a refusal's message stands alone.
    match ipa_ra {
        crate::IpaRa::On { unit, .. } => {
            tracing::warn!(unit, "packing for a baseline built with -fipa-ra (--allow-ipa-ra)")
        }
        crate::IpaRa::Unknown => tracing::warn!(
            "cannot tell whether the baseline was built with -fno-ipa-ra (no gcc DWARF producer strings); \
             a baseline built with gcc -O2 and without -fno-ipa-ra is unsafe to hotpatch"
        ),
        crate::IpaRa::Off { .. } => {}
    }
    Ok(manifest)
}

/// A replaced function that DWARF shows inlined into callers that are not
/// replaced too: those inlined copies would go on running the old code.
fn refuse_inlined(req: &PackRequest<'_>) -> Result<(), BuildError> {
    let dwarf = req.debug_file.unwrap_or(req.baseline);
    let inlined = crate::inlined::inlined_into(dwarf);
    let replaced: std::collections::BTreeSet<&str> = req.replacements.iter().map(|r| r.old.as_str()).collect();
    for r in &req.replacements {
        let Some(callers) = inlined.get(&r.old) else { continue };
        let left: Vec<&str> = callers.iter().map(String::as_str).filter(|c| !replaced.contains(c)).collect();
        if !left.is_empty() {
            return Err(BuildError::InlinedInto { symbol: r.old.clone(), callers: left.join(", ") });
        }
    }
    Ok(())
}

/// Every name the payload leaves undefined must be defined by the baseline
/// or exported by one of the libraries it needs (`exports`, with their names
/// for the message), or the engine would refuse the package on every machine.
pub fn check_undefined(
    req: &PackRequest<'_>,
    exports: &std::collections::BTreeSet<String>,
    libraries: &[String],
) -> Result<(), BuildError> {
    let baseline = TargetElf::parse(req.baseline)
        .map_err(|source| BuildError::Baseline { name: req.baseline_name.clone(), source })?;
    let debug = req.debug_file.and_then(|d| TargetElf::parse(d).ok());
    let symbols = SymbolTable::from_target(&baseline, debug.as_ref());
    let file = object::File::parse(req.payload)
        .map_err(|e| BuildError::Payload(hotpatch_format::FormatError::Payload(e.to_string())))?;
    for sym in file.symbols().filter(|s| s.is_undefined() && !s.is_weak()) {
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() || name == "_GLOBAL_OFFSET_TABLE_" || exports.contains(name) {
            continue;
        }
        if symbols.lookup(name, None).is_err() && symbols.named(name).is_empty() {
            return Err(BuildError::Unresolved { name: name.to_owned(), libraries: libraries.join(", ") });
        }
    }
    Ok(())
}

/// What a publisher says of a hotpatch, whichever way it was made.
pub(crate) struct About<'a> {
    pub patch_id: Option<&'a str>,
    pub product: &'a str,
    pub level: u32,
    pub classification: Classification,
    pub cves: &'a [String],
    pub description: &'a str,
    pub created: &'a str,
}

/// The manifest before signing (hash and key id are filled in by `Package::build`).
pub(crate) fn unsigned_manifest(
    about: &About<'_>,
    target: Target,
    functions: Vec<FunctionPatch>,
    symbols: Vec<hotpatch_format::BaselineSymbol>,
) -> Manifest {
    let patch_id = about
        .patch_id
        .map(str::to_owned)
        .unwrap_or_else(|| default_patch_id(&target.file_name, &target.build_id, about.level));
    Manifest {
        format_version: FORMAT_VERSION,
        patch_id,
        product: about.product.to_owned(),
        target,
        level: about.level,
        classification: about.classification,
        cves: about.cves.to_vec(),
        description: about.description.to_owned(),
        created: about.created.to_owned(),
        functions,
        symbols,
        payload_sha256: "0".repeat(64),
        signing_key_id: "0".repeat(16),
    }
}

fn payload_functions(payload: &[u8]) -> Result<Vec<String>, BuildError> {
    let file = object::File::parse(payload)
        .map_err(|e| BuildError::Payload(hotpatch_format::FormatError::Payload(e.to_string())))?;
    Ok(file
        .symbols()
        .filter(|s| s.is_definition() && s.kind() == ObjKind::Text)
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect())
}

pub(crate) fn default_patch_id(file_name: &str, build_id: &str, level: u32) -> String {
    let stem: String = file_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(32)
        .collect();
    let stem = stem.trim_start_matches(['.', '-']);
    let stem = if stem.is_empty() { "target" } else { stem };
    format!("{stem}-{}-l{level}", &build_id[..build_id.len().min(12)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_specs() {
        assert_eq!(
            parse_replacement("a.c:check=check_v2").unwrap(),
            Replacement { old: "check".into(), file: Some("a.c".into()), new: "check_v2".into() }
        );
        assert_eq!(parse_replacement("f=g").unwrap().file, None);
        for bad in ["f", "=g", "f=", ":f=g", "f=g=h", "f=a:b"] {
            assert!(parse_replacement(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn default_ids_are_valid_patch_ids() {
        let id = default_patch_id("lib foo.so.1", "0123456789abcdef0123", 3);
        assert_eq!(id, "lib_foo.so.1-0123456789ab-l3");
        assert_eq!(default_patch_id("..", "abcd", 1), "target-abcd-l1");
    }
}
