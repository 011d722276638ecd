//! `hotpatch pack`, `inspect` and `verify`.

use crate::output::Output;
use anyhow::Context;
use clap::Args;
use hotpatch_build::{PackRequest, manifest_for, parse_replacement};
use hotpatch_format::{Classification, Manifest, Package, SecretKey, TrustStore};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PackArgs {
    /// The baseline executable or shared library the hotpatch is for.
    #[arg(long)]
    baseline: PathBuf,
    /// Relocatable object (.o) holding the replacement functions.
    #[arg(long)]
    payload: PathBuf,
    /// OLD=NEW: replace baseline function OLD by payload function NEW;
    /// FILE:OLD=NEW names the source file of a static OLD whose name is not unique.
    #[arg(long = "replace", required = true)]
    replace: Vec<String>,
    #[command(flatten)]
    publish: PublishArgs,
    /// Pack although the baseline was built with gcc's -fipa-ra (its callers may
    /// rely on registers a replacement clobbers); only when you checked that.
    #[arg(long)]
    allow_ipa_ra: bool,
}

/// What `pack` and `build` both ask of the publisher: what the hotpatch is,
/// who signs it, where it goes, and the baseline's debug file.
#[derive(Args)]
pub struct PublishArgs {
    /// Cumulative level within the baseline (1, 2, ...): it carries every fix since the baseline.
    #[arg(long)]
    pub level: u32,
    /// security, critical, non-security, runtime, third-party or firmware-driver.
    #[arg(long)]
    pub classification: Classification,
    /// CVE fixed by this hotpatch (repeatable).
    #[arg(long = "cve")]
    pub cves: Vec<String>,
    /// Product name; defaults to the baseline's file name.
    #[arg(long)]
    pub product: Option<String>,
    /// Patch id; defaults to FILE-BUILDID-lLEVEL.
    #[arg(long = "id")]
    pub patch_id: Option<String>,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Publisher secret key (from `hotpatch keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Output package file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Separate debug file of a stripped baseline (default: by build-id under
    /// $HOTPATCH_DEBUG_DIRS and /usr/lib/debug).
    #[arg(long)]
    pub debug_file: Option<PathBuf>,
}

impl PublishArgs {
    /// The baseline's debug file: the one given, else the one a machine would find.
    pub fn debug_file_for(&self, baseline: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        match &self.debug_file {
            Some(path) => Ok(Some(read(path, "debug file")?)),
            None => Ok(debug_file_for(baseline)),
        }
    }
}

pub(crate) fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

pub fn pack(args: PackArgs, out: &Output) -> anyhow::Result<()> {
    let baseline = read(&args.baseline, "baseline")?;
    // A payload calling the shadow variable API gets its runtime linked in.
    let payload = hotpatch_build::with_runtime(read(&args.payload, "payload")?)?;
    let key = SecretKey::load(&args.publish.key)?;
    let replacements = args.replace.iter().map(|s| parse_replacement(s)).collect::<Result<Vec<_>, _>>()?;
    let baseline_name =
        args.baseline.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "target".into());
    let debug_file = args.publish.debug_file_for(&baseline)?;
    let request = PackRequest {
        baseline: &baseline,
        baseline_name: baseline_name.clone(),
        debug_file: debug_file.as_deref(),
        payload: &payload,
        replacements,
        patch_id: args.publish.patch_id,
        product: args.publish.product.unwrap_or(baseline_name),
        level: args.publish.level,
        classification: args.publish.classification,
        cves: args.publish.cves,
        description: args.publish.description,
        created: jiff::Timestamp::now().round(jiff::Unit::Second)?.to_string(),
        allow_ipa_ra: args.allow_ipa_ra,
    };
    let manifest = manifest_for(&request)?;
    if let Some((exports, libraries)) = crate::libraries::needed_exports(&baseline, &args.baseline) {
        hotpatch_build::check_undefined(&request, &exports, &libraries)?;
    }
    if !manifest.classification.hotpatchable() {
        tracing::warn!(
            classification = %manifest.classification,
            "only security and critical fixes are offered as hotpatches; this one will wait for a baseline"
        );
    }
    let bytes = Package::build(manifest, &payload, &key)?;
    write_new(&args.publish.output, &bytes)?;
    let package = Package::parse(&bytes)?;
    if out.json {
        out.print_json(&serde_json::json!({
            "output": args.publish.output,
            "bytes": bytes.len(),
            "manifest": package.manifest,
        }))
    } else {
        println!("{} {} ({} bytes)", out.good("packed"), args.publish.output.display(), bytes.len());
        print_manifest(&package.manifest, out);
        Ok(())
    }
}

/// Writes through a temporary file and a rename, so a crash never leaves a
/// half-written package under the final name.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// The separate debug file of a stripped baseline, found as the engine finds
/// it on a machine (by build-id under the debug roots, its own build-id checked).
fn debug_file_for(baseline: &[u8]) -> Option<Vec<u8>> {
    hotpatch_engine::debug_file(&hotpatch_elf::TargetElf::parse(baseline).ok()?)
}

#[derive(Args)]
pub struct InspectArgs {
    /// The package file.
    file: PathBuf,
}

pub fn inspect(args: InspectArgs, out: &Output) -> anyhow::Result<()> {
    let bytes = read(&args.file, "package")?;
    let package = Package::parse(&bytes).with_context(|| format!("{} is not a valid package", args.file.display()))?;
    let payload_check = hotpatch_format::check_payload(&package.payload, package.manifest.target.machine);
    // What the engine will run inside the process besides the replacements.
    let callbacks = hotpatch_build::runtime::callbacks(&package.payload).unwrap_or_default();
    let shadow = hotpatch_build::runtime::defines_shadow_root(&package.payload);
    if out.json {
        return out.print_json(&serde_json::json!({
            "file": args.file,
            "bytes": bytes.len(),
            "signature": "not checked (use verify)",
            "payload_bytes": package.payload.len(),
            "payload_ok": payload_check.is_ok(),
            "payload_problem": payload_check.as_ref().err().map(|e| e.to_string()),
            "callbacks": callbacks,
            "shadow_variables": shadow,
            "manifest": package.manifest,
        }));
    }
    println!("{} ({} bytes; signature not checked: use `hotpatch verify`)", args.file.display(), bytes.len());
    print_manifest(&package.manifest, out);
    match payload_check {
        Ok(()) => {
            println!("payload: {} bytes, relocatable {} object", package.payload.len(), package.manifest.target.machine)
        }
        Err(e) => println!("payload: {}", out.bad(&e.to_string())),
    }
    if !callbacks.is_empty() {
        println!("callbacks: {}", callbacks.join(", "));
    }
    if shadow {
        println!("shadow variables: yes (runtime linked in)");
    }
    Ok(())
}

pub(crate) fn print_manifest(m: &Manifest, out: &Output) {
    out.fields(&[
        ("patch id", m.patch_id.clone()),
        ("product", m.product.clone()),
        ("target", format!("{} ({}, build-id {})", m.target.file_name, m.target.machine, m.target.build_id)),
        ("level", m.level.to_string()),
        (
            "classification",
            format!(
                "{}{}",
                m.classification,
                if m.classification.hotpatchable() { "" } else { " (needs a baseline: not offered as a hotpatch)" }
            ),
        ),
        ("CVEs", if m.cves.is_empty() { "-".into() } else { m.cves.join(", ") }),
        ("description", if m.description.is_empty() { "-".into() } else { m.description.clone() }),
        ("created", m.created.clone()),
        ("signed by key", m.signing_key_id.clone()),
        ("payload sha256", m.payload_sha256.clone()),
    ]);
    let rows: Vec<Vec<String>> = m
        .functions
        .iter()
        .map(|f| vec![f.display_name(), f.replacement.clone(), f.size.to_string(), f.original_sha256[..16].to_string()])
        .collect();
    out.table(&["FUNCTION", "REPLACEMENT", "SIZE", "ORIGINAL SHA256"], &rows);
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The package file.
    file: PathBuf,
    /// A trusted publisher key (.pub) or a directory of them.
    #[arg(long)]
    trust: PathBuf,
}

pub fn verify(args: VerifyArgs, out: &Output) -> anyhow::Result<()> {
    let bytes = read(&args.file, "package")?;
    let trust = TrustStore::load(&args.trust)?;
    let verified = hotpatch_format::verify(&bytes, &trust)
        .with_context(|| format!("{} failed verification", args.file.display()))?;
    if out.json {
        out.print_json(&serde_json::json!({
            "file": args.file,
            "verified": true,
            "key_id": verified.key_id,
            "patch_id": verified.manifest.patch_id,
            "level": verified.manifest.level,
            "target_build_id": verified.manifest.target.build_id,
        }))
    } else {
        println!(
            "{}: {} level {} signed by trusted key {}",
            out.good("verified"),
            verified.manifest.patch_id,
            verified.manifest.level,
            verified.key_id
        );
        Ok(())
    }
}
