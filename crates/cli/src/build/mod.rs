//! `hotpatch build`: a signed hotpatch from a source tree and a fix (or from
//! two object trees built elsewhere), for the baseline file as shipped.

mod objects;
mod touched;
mod tree;

use crate::output::Output;
use crate::package::{PublishArgs, print_manifest, read, write_new};
use anyhow::Context;
use clap::Args;
use hotpatch_build::explain::Explain;
use hotpatch_build::{DiffBuildRequest, build_from_objects};
use hotpatch_format::{Package, SecretKey};
use std::path::PathBuf;

#[derive(Args)]
pub struct BuildArgs {
    /// Source tree of the baseline (built twice: as is, and with the patches).
    #[arg(long, conflicts_with_all = ["old_objects", "new_objects"], requires = "patches")]
    source: Option<PathBuf>,
    /// Source fix (unified diff, applied with `patch -p1`, in order); repeatable.
    #[arg(long = "patch")]
    patches: Vec<PathBuf>,
    /// Build command, run by `sh -c` in the tree.
    #[arg(long, default_value = "make")]
    command: String,
    /// Objects of the original build, made elsewhere with -ffunction-sections.
    #[arg(long, requires = "new_objects")]
    old_objects: Option<PathBuf>,
    /// Objects of the fixed build (same layout as --old-objects).
    #[arg(long, requires = "old_objects")]
    new_objects: Option<PathBuf>,
    /// The baseline as installed: executable or shared library (stripped is fine).
    #[arg(long)]
    baseline: PathBuf,
    #[command(flatten)]
    publish: PublishArgs,
    /// Parallel jobs in all (MAKEFLAGS=-jN, DEB_BUILD_OPTIONS=parallel=N); with
    /// two or more, the original and fixed builds run at once, half each.
    #[arg(long, default_value_t = 2)]
    jobs: u32,
    /// Say, for every function that differs, whether it is in the patch and why.
    #[arg(long)]
    explain: bool,
    /// Keep the two build trees here (default: a temporary directory, removed).
    #[arg(long)]
    keep_work: Option<PathBuf>,
}

pub fn build(args: BuildArgs, out: &Output) -> anyhow::Result<()> {
    let baseline = read(&args.baseline, "baseline")?;
    let key = SecretKey::load(&args.publish.key)?;
    let debug_file = args.publish.debug_file_for(&baseline)?;
    let started = std::time::Instant::now();
    let (old_dir, new_dir, diffs, _work) = match (&args.source, &args.old_objects, &args.new_objects) {
        (Some(source), _, _) => {
            let work = tree::Work::new(args.keep_work.as_deref())?;
            let (old, new) = work.build_both(source, &args.patches, &args.command, args.jobs)?;
            let diffs = touched::source_diffs(&args.patches, Some((&old, &new)))?;
            (old, new, diffs, Some(work))
        }
        (None, Some(old), Some(new)) => (old.clone(), new.clone(), touched::source_diffs(&args.patches, None)?, None),
        _ => anyhow::bail!("give --source DIR with --patch FIX.diff, or --old-objects DIR with --new-objects DIR"),
    };
    let builds_ms = started.elapsed().as_millis() as u64;
    let compare_started = std::time::Instant::now();
    progress(out, "comparing the builds and matching the baseline");
    let objects = objects::pairs(&old_dir, &new_dir)?;
    let unchanged = || objects::parse_unchanged(&objects.unchanged);
    let references = objects::linked_files(&old_dir)?;
    let baseline_name =
        args.baseline.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "target".into());
    let request = DiffBuildRequest {
        baseline: &baseline,
        baseline_name: baseline_name.clone(),
        debug_file: debug_file.as_deref(),
        references,
        pairs: objects.pairs,
        added: objects::parse_added(&objects.added, &new_dir, &baseline_name)?,
        unchanged: &unchanged,
        touched: touched::functions_in(&diffs, &new_dir),
        line_shifts: touched::line_shifts(&diffs),
        asm_changes: touched::asm_changes(&diffs, &new_dir),
        patch_id: args.publish.patch_id,
        product: args.publish.product.unwrap_or(baseline_name),
        level: args.publish.level,
        classification: args.publish.classification,
        cves: args.publish.cves,
        description: args.publish.description,
        created: jiff::Timestamp::now().round(jiff::Unit::Second)?.to_string(),
    };
    let built = build_from_objects(&request)?;
    // The builder's own cost: reading, diffing, matching and linking, without
    // the two builds (which are the user's build cost).
    let compare_ms = compare_started.elapsed().as_millis() as u64;
    let bytes = Package::build(built.manifest, &built.payload, &key)?;
    write_new(&args.publish.output, &bytes)?;
    let package = Package::parse(&bytes).context("the package just built does not parse")?;
    if out.json {
        return out.print_json(&serde_json::json!({
            "output": args.publish.output,
            "bytes": bytes.len(),
            "manifest": package.manifest,
            "explain": built.explain,
            "timings": { "builds_ms": builds_ms, "compare_ms": compare_ms },
        }));
    }
    println!(
        "{} {} ({} bytes; builds {:.1} s, compare and link {:.2} s)",
        out.good("built"),
        args.publish.output.display(),
        bytes.len(),
        builds_ms as f64 / 1000.0,
        compare_ms as f64 / 1000.0
    );
    print_manifest(&package.manifest, out);
    if args.explain {
        print_explain(&built.explain, out);
    }
    Ok(())
}

/// Progress goes to stderr so that `--json` output stays one document.
pub(crate) fn progress(out: &Output, step: &str) {
    if !out.json || std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("{} {step}", out.bold("::"));
    }
}

fn print_explain(explain: &Explain, out: &Output) {
    println!();
    let symbols = match &explain.symbols {
        hotpatch_build::baseline::SymbolOrigin::Symtab => "its own symbol table".to_owned(),
        hotpatch_build::baseline::SymbolOrigin::DebugFile(p) => format!("its debug file ({p})"),
        hotpatch_build::baseline::SymbolOrigin::Reference(p) => {
            format!("the builder's own link {p}, whose code is the baseline's")
        }
        hotpatch_build::baseline::SymbolOrigin::Dynsym => "its exported symbols only".to_owned(),
    };
    println!("baseline {} (build-id {}): symbols from {symbols}", explain.baseline, explain.build_id);
    let rows: Vec<Vec<String>> = explain
        .objects
        .iter()
        .map(|o| {
            let state = if o.in_baseline {
                let partly = o.mismatch.as_ref().map(|m| format!("; differs: {m}")).unwrap_or_default();
                format!("matches the baseline ({} functions{partly})", o.matched)
            } else {
                o.mismatch.clone().map_or("not part of the baseline".into(), |m| format!("not the baseline: {m}"))
            };
            vec![o.path.clone(), state]
        })
        .collect();
    out.table(&["OBJECT", "RUN-PRE MATCH"], &rows);
    println!();
    let rows: Vec<Vec<String>> = explain
        .functions
        .iter()
        .map(|f| {
            let verdict = serde_json::to_value(&f.verdict)
                .ok()
                .and_then(|v| v.get("verdict").and_then(|s| s.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let patch = if f.in_patch { "yes" } else { "no" };
            vec![f.name.clone(), verdict, patch.into(), f.reasons.join("; ")]
        })
        .collect();
    out.table(&["FUNCTION", "VERDICT", "IN PATCH", "WHY"], &rows);
    for note in &explain.notes {
        println!("note: {note}");
    }
}
