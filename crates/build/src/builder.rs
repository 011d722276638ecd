//! From two builds to a hotpatch: diff every object pair, prove the changed
//! objects are the baseline's code (run-pre), choose what goes into the
//! patch, refuse what needs a restart, write the payload and the manifest.

use crate::added::AddedObject;
use crate::baseline::{Baseline, SymbolOrigin};
use crate::diff::{ObjectDiff, Verdict, constructor_functions, diff_objects};
use crate::explain::{Explain, FunctionReport, ObjectReport, reasons};
use crate::objfile::{ObjectFile, RefKey, SectionClass, SymKind, is_tls};
use crate::payload::{Binder, Binding, PayloadWriter, Selection, payload_name};
use crate::runpre::{Mismatch, match_function};
use crate::selection::{add_data, close_over, is_callback};
use hotpatch_elf::{SymbolTable, TargetElf};
use hotpatch_format::{
    BaselineSymbol, Classification, FunctionPatch, MIN_SITE_SIZE, Machine, Manifest, Target, sha256_hex,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DiffBuildError {
    #[error("baseline {name}: {why}")]
    Baseline { name: String, why: String },
    #[error("needs a baseline (restart): {0}")]
    NeedsBaseline(String),
    #[error(
        "the builder's original build is not the baseline's code: {mismatch}.\n  compilers of the builder's build: \
         {ours}\n  compilers of the baseline: {theirs}"
    )]
    NotTheBaseline { mismatch: Mismatch, ours: String, theirs: String },
    #[error("nothing to patch: {0}")]
    NothingChanged(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("payload: {0}")]
    Payload(String),
    #[error("manifest: {0}")]
    Manifest(#[from] hotpatch_format::FormatError),
}

/// A line of inline assembly the fix adds or removes: in `file` (a source
/// file name), inside `function` or at file scope.
#[derive(Debug, Clone)]
pub struct AsmChange {
    pub file: String,
    pub line: usize,
    pub function: Option<String>,
}

/// An object of the original build and the same object of the fixed build.
pub struct ObjectPair {
    pub old: ObjectFile,
    pub new: ObjectFile,
}

/// Everything `hotpatch build` decides from; the package is then
/// `Package::build(manifest, payload, key)`.
pub struct DiffBuildRequest<'a> {
    pub baseline: &'a [u8],
    pub baseline_name: String,
    pub debug_file: Option<&'a [u8]>,
    /// Linked files of the builder's original build (path, bytes): one whose
    /// code is the baseline's stands in for a stripped baseline's symbols.
    pub references: Vec<(String, Vec<u8>)>,
    pub pairs: Vec<ObjectPair>,
    /// Objects only the fixed build has (source files the fix adds).
    pub added: Vec<AddedObject>,
    /// Functions the source patches touch (for `--explain`).
    pub touched: BTreeSet<String>,
    /// How the patches move each file's lines, by file name: a `__LINE__`
    /// that moved just so is not a change.
    pub line_shifts: BTreeMap<String, Vec<(u64, i64)>>,
    /// Reads the objects of the original build the fix did not change.
    /// Called only when a stripped baseline has nothing to start the run-pre
    /// match from but `main` (its symbols are then reached through them).
    pub unchanged: &'a dyn Fn() -> Vec<ObjectFile>,
    /// Inline assembly the source fix changes (refused where the baseline runs it).
    pub asm_changes: Vec<AsmChange>,
    pub patch_id: Option<String>,
    pub product: String,
    pub level: u32,
    pub classification: Classification,
    pub cves: Vec<String>,
    pub description: String,
    pub created: String,
}

pub struct DiffBuildOutput {
    pub manifest: Manifest,
    pub payload: Vec<u8>,
    pub explain: Explain,
}

/// Builds the manifest and payload of a hotpatch from two builds.
pub fn build_from_objects(req: &DiffBuildRequest<'_>) -> Result<DiffBuildOutput, DiffBuildError> {
    let name = req.baseline_name.clone();
    let baseline_err = |why: String| DiffBuildError::Baseline { name: name.clone(), why };
    let elf = TargetElf::parse(req.baseline).map_err(|e| baseline_err(e.to_string()))?;
    let build_id = elf.build_id_hex().map_err(|e| baseline_err(e.to_string()))?;
    let machine = Machine::from_elf(elf.e_machine()).filter(|m| *m == Machine::X86_64).ok_or_else(|| {
        DiffBuildError::Unsupported(format!("baseline {name}: the builder makes hotpatches for x86_64 only"))
    })?;
    let baseline = open_baseline(elf, req)?;
    let mut explain = Explain::new(&name, &build_id, baseline.origin.clone());

    let diffs: Vec<ObjectDiff> = req
        .pairs
        .iter()
        .map(|p| {
            let file = p.new.source_file.as_deref().map(|f| f.rsplit('/').next().unwrap_or(f));
            diff_objects(&p.old, &p.new, file.and_then(|f| req.line_shifts.get(f)).map(Vec::as_slice))
        })
        .collect();
    let located = locate_objects(&baseline, req, &diffs, &mut explain)?;
    let in_baseline = located.objects.clone();
    if in_baseline.is_empty()
        && let Some(mismatch) = baseline.reference_mismatch.clone()
        && let Some(pair) = req.pairs.first()
    {
        // A stripped baseline whose symbols could not be borrowed: the
        // builder's own link is another program.
        return Err(not_the_baseline(&baseline, &pair.old, mismatch));
    }
    if in_baseline.is_empty() {
        return Err(DiffBuildError::NothingChanged(
            "no function of the baseline differs between the original and the fixed build".into(),
        ));
    }
    refuse_unpatchable(req, &diffs, &in_baseline)?;
    let selections = select(req, &diffs, &in_baseline);
    refuse_signature_changes(&baseline, req, &diffs, &in_baseline, &selections)?;
    for (&i, selection) in &selections {
        refuse_new_tls(&req.pairs[i].new, &diffs[i].new_data, selection)?;
    }
    check_tolerated(&baseline, req, &located, &selections, &mut explain)?;
    let paired: Vec<(&ObjectFile, &Selection)> = selections.iter().map(|(&i, s)| (&req.pairs[i].new, s)).collect();
    let added = crate::added::select(&req.added, &paired);
    for (&k, selection) in &added {
        let obj = &req.added[k].object;
        refuse_new_tls(obj, &crate::added::data_names(obj), selection)?;
    }
    note_added(req, &added, &mut explain);
    let mut writer = PayloadWriter::default();
    let mut functions = Vec::new();
    for (&i, selection) in &selections {
        writer.add_sections(i, &req.pairs[i].new, selection);
    }
    // Added files are numbered after the pairs, so payload names stay unique.
    let added_index = |k: usize| req.pairs.len() + k;
    for (&k, selection) in &added {
        writer.add_sections(added_index(k), &req.added[k].object, selection);
        writer.expose_globals(added_index(k), &req.added[k].object);
    }
    let mut binder = BaselineBinder { baseline: &baseline };
    for &i in selections.keys() {
        writer.add_relocations(i, &req.pairs[i].new, &mut binder).map_err(DiffBuildError::Payload)?;
        writer.add_unwind(i, &req.pairs[i].new, &mut binder);
        functions.extend(sites(&baseline, req, i, &diffs[i], &selections[&i], &mut explain)?);
    }
    for &k in added.keys() {
        let obj = &req.added[k].object;
        writer.add_relocations(added_index(k), obj, &mut binder).map_err(DiffBuildError::Payload)?;
        writer.add_unwind(added_index(k), obj, &mut binder);
    }
    report_functions(req, &diffs, &in_baseline, &selections, &mut explain);
    if functions.is_empty() {
        return Err(DiffBuildError::NothingChanged("the fix changes no function that the baseline runs".into()));
    }
    let (payload, bound) = writer.finish().map_err(DiffBuildError::Payload)?;
    let payload = crate::runtime::with_runtime(payload).map_err(|e| DiffBuildError::Payload(e.to_string()))?;
    for name in crate::runtime::callbacks(&payload).map_err(|e| DiffBuildError::Payload(e.to_string()))? {
        explain.notes.push(format!("{name}: a callback the engine runs inside the process"));
    }
    hotpatch_format::check_payload(&payload, machine)?;
    let about = crate::pack::About {
        patch_id: req.patch_id.as_deref(),
        product: &req.product,
        level: req.level,
        classification: req.classification,
        cves: &req.cves,
        description: &req.description,
        created: &req.created,
    };
    let symbols = bound.into_iter().map(|(name, address)| BaselineSymbol { name, address }).collect();
    let manifest =
        crate::pack::unsigned_manifest(&about, Target { build_id, file_name: name, machine }, functions, symbols);
    manifest.validate()?;
    Ok(DiffBuildOutput { manifest, payload, explain })
}

/// The baseline with the best symbols to be had: its own, its debug file's,
/// or those of the builder's own link of the original source when that link's
/// code is the baseline's.
fn open_baseline<'a>(elf: TargetElf<'a>, req: &DiffBuildRequest<'_>) -> Result<Baseline<'a>, DiffBuildError> {
    if elf.has_symtab() {
        let symbols = SymbolTable::from_target(&elf, None);
        return Ok(Baseline::new(elf, symbols, SymbolOrigin::Symtab));
    }
    if let Some(debug) = req.debug_file
        && let Ok(debug_elf) = TargetElf::parse(debug)
        && debug_elf.build_id().ok().flatten() == elf.build_id().ok().flatten()
    {
        let symbols = SymbolTable::from_target(&elf, Some(&debug_elf));
        return Ok(Baseline::new(elf, symbols, SymbolOrigin::DebugFile("debug file".into())));
    }
    let best = req
        .references
        .iter()
        .filter_map(|(path, data)| {
            let reference = TargetElf::parse(data).ok()?;
            let symbols = SymbolTable::from_target(&reference, None);
            let score = reference_score(&elf, &reference, &symbols)?;
            tracing::debug!(path, score = score.share, "reference link of the original build");
            Some((score, path, symbols))
        })
        // The link of the same name first (a tree builds many files), then the closest.
        .max_by(|a, b| {
            let same = |p: &str| Path::new(p).file_name().is_some_and(|n| n.to_string_lossy() == req.baseline_name);
            (same(a.1), a.0.share).partial_cmp(&(same(b.1), b.0.share)).unwrap_or(std::cmp::Ordering::Equal)
        });
    match best {
        Some((score, path, symbols)) if score.share >= MIN_REFERENCE_SCORE => {
            let mut baseline = Baseline::new(elf, symbols, SymbolOrigin::Reference(path.clone()));
            baseline.proven_functions = Some(score.proven);
            Ok(baseline)
        }
        other => {
            let symbols = SymbolTable::from_target(&elf, None);
            let mut baseline = Baseline::new(elf, symbols, SymbolOrigin::Dynsym);
            baseline.reference_mismatch = other.and_then(|(score, path, _)| {
                score.first_difference.map(|m| Mismatch { function: format!("{} ({path})", m.function), ..m })
            });
            Ok(baseline)
        }
    }
}

/// The share of a reference link's functions the baseline must hold byte for
/// byte at the same addresses before the reference's symbols are believed.
/// Not all: a function that refers to data placed elsewhere differs in a
/// displacement, and each function used is proven on its own anyway.
const MIN_REFERENCE_SCORE: f64 = 0.9;

/// How much of a reference link the baseline holds at the same addresses.
struct ReferenceScore {
    share: f64,
    /// Addresses of the functions the baseline has byte for byte.
    proven: BTreeSet<u64>,
    first_difference: Option<Mismatch>,
}

/// `None` when the reference has no symbols to lend.
fn reference_score(
    baseline: &TargetElf<'_>,
    reference: &TargetElf<'_>,
    symbols: &SymbolTable,
) -> Option<ReferenceScore> {
    if !reference.has_symtab() || reference.e_type() != baseline.e_type() {
        return None;
    }
    let mut total = 0u64;
    let mut proven = BTreeSet::new();
    let mut first_difference = None;
    for sym in symbols.iter().filter(|s| Baseline::is_function(s) && s.size > 0) {
        total += 1;
        let ours = reference.bytes_at(sym.address, sym.size).unwrap_or(&[]);
        let theirs = baseline.bytes_at(sym.address, sym.size).unwrap_or(&[]);
        if ours == theirs && !ours.is_empty() {
            proven.insert(sym.address);
        } else if first_difference.is_none() {
            let offset = ours.iter().zip(theirs).position(|(a, b)| a != b).unwrap_or(0);
            first_difference = Some(Mismatch {
                function: sym.name.clone(),
                offset: offset as u64,
                detail: format!(
                    "the builder's link has 0x{:02x}, the baseline 0x{:02x} at the same address",
                    ours.get(offset).copied().unwrap_or(0),
                    theirs.get(offset).copied().unwrap_or(0)
                ),
            });
        }
    }
    (total > 0).then(|| ReferenceScore { share: proven.len() as f64 / total as f64, proven, first_difference })
}

/// How the functions of one original object compare with the baseline.
struct ObjectMatch {
    matched: usize,
    mismatches: Vec<Mismatch>,
}

impl ObjectMatch {
    fn full(&self) -> bool {
        self.matched > 0 && self.mismatches.is_empty()
    }
}

fn match_object(baseline: &Baseline<'_>, old: &ObjectFile) -> ObjectMatch {
    let mut result = ObjectMatch { matched: 0, mismatches: Vec::new() };
    for (sym, _) in old.functions() {
        let s = &old.symbols[sym];
        let Ok(at) = baseline.lookup(&s.name, s.local, old.source_file.as_deref()) else { continue };
        match match_function(baseline, old, sym, &at) {
            Ok(()) => result.matched += 1,
            Err(m) => result.mismatches.push(m),
        }
    }
    result
}

/// Which changed objects are part of the baseline: every one of their
/// functions the baseline has must match it (run-pre). A tree often builds a
/// file more than once (libtool's PIC and static objects, a wide-character
/// variant): a build of the same source file that matches in full settles
/// it, and the others are another program's. A file whose builds match only
/// in part is the baseline's file, some of whose functions the builder's
/// flags compiled differently (`-ffunction-sections` can change register
/// allocation): those are tolerated only if the patch has nothing to do with
/// them ([`check_tolerated`]).
fn locate_objects(
    baseline: &Baseline<'_>,
    req: &DiffBuildRequest<'_>,
    diffs: &[ObjectDiff],
    explain: &mut Explain,
) -> Result<Located, DiffBuildError> {
    let changed: Vec<usize> = (0..req.pairs.len()).filter(|&i| !diffs[i].is_empty()).collect();
    // A file that exports nothing of its own (a stripped executable whose
    // layout the builder's link does not share) gives the match no symbol
    // to start from but `main`, found from its entry point; the symbols the
    // changed files need are then reached through the unchanged ones.
    let unchanged = if matches!(baseline.origin, SymbolOrigin::Dynsym) && baseline.lookup("main", false, None).is_err()
    {
        (req.unchanged)()
    } else {
        Vec::new()
    };
    let from_entry = seed_main(baseline, req, &unchanged);
    // What each round matches: the changed objects (by pair index), and when
    // starting from `main`, every other object too, for what it locates.
    let learners: Vec<(Option<usize>, &ObjectFile)> = if from_entry {
        let pairs = req.pairs.iter().enumerate().map(|(i, p)| (changed.contains(&i).then_some(i), &p.old));
        pairs.chain(unchanged.iter().map(|o| (None, o))).collect()
    } else {
        changed.iter().map(|&i| (Some(i), &req.pairs[i].old)).collect()
    };
    let rounds = if from_entry { 32 } else { 4 };
    // Each round may locate symbols (run-pre) that let more functions be
    // matched in the next; a few rounds reach the fixed point.
    let mut matches: BTreeMap<usize, ObjectMatch> = BTreeMap::new();
    for _ in 0..rounds {
        let before = baseline.learned_count();
        // Every object is matched (for what it locates); the changed ones are kept.
        matches = learners
            .iter()
            .filter_map(|&(i, obj)| {
                let m = match_object(baseline, obj);
                i.map(|i| (i, m))
            })
            .collect();
        if baseline.learned_count() == before {
            break;
        }
    }

    let source = |i: usize| req.pairs[i].old.source_file.clone().unwrap_or_else(|| req.pairs[i].old.path.clone());
    let settled: BTreeSet<String> = matches.iter().filter(|(_, m)| m.full()).map(|(&i, _)| source(i)).collect();
    // Of the partial matches of one file, the closest is the baseline's, if
    // most of its functions match: another build of the file (gcov, a debug
    // variant) may match in a few small functions while the baseline's own
    // build is not among the changed objects at all.
    let mut closest: BTreeMap<String, usize> = BTreeMap::new();
    for (&i, m) in matches.iter().filter(|(_, m)| m.matched > m.mismatches.len() && !m.full()) {
        let best = closest.entry(source(i)).or_insert(i);
        let score = |m: &ObjectMatch| (m.matched, std::cmp::Reverse(m.mismatches.len()));
        if score(m) > score(&matches[best]) {
            *best = i;
        }
    }
    let mut found = BTreeSet::new();
    let mut tolerated = BTreeMap::new();
    let mut first_mismatch: Option<(usize, Mismatch)> = None;
    for (&i, m) in &matches {
        let old = &req.pairs[i].old;
        if m.full() {
            found.insert(i);
        } else if m.matched > 0 && !settled.contains(&source(i)) && closest.get(&source(i)) == Some(&i) {
            found.insert(i);
            tolerated.insert(i, m.mismatches.clone());
        } else if let Some(first) = m.mismatches.first() {
            first_mismatch.get_or_insert((i, first.clone()));
        }
        explain.objects.push(ObjectReport {
            path: old.path.clone(),
            in_baseline: found.contains(&i),
            matched: m.matched,
            mismatch: m.mismatches.first().map(ToString::to_string),
        });
    }
    if found.is_empty()
        && let Some((i, m)) = first_mismatch
    {
        return Err(not_the_baseline(baseline, &req.pairs[i].old, m));
    }
    Ok(Located { objects: found, tolerated })
}

/// Locates `main` from the entry point when the baseline's tables lack it
/// and an original object defines it; whether it did. Only a start: `main`
/// is believed once its object's code matches there.
fn seed_main(baseline: &Baseline<'_>, req: &DiffBuildRequest<'_>, unchanged: &[ObjectFile]) -> bool {
    if !matches!(baseline.origin, SymbolOrigin::Dynsym) || baseline.lookup("main", false, None).is_ok() {
        return false;
    }
    let Some((obj, sym)) = req.pairs.iter().map(|p| &p.old).chain(unchanged).find_map(|obj| {
        let s = &obj.symbols[obj.find("main")?];
        (s.kind == SymKind::Function && !s.local && s.section.is_some()).then_some((obj, s))
    }) else {
        return false;
    };
    let Some(address) = baseline.main_from_entry() else { return false };
    tracing::debug!(address, object = obj.path, "main located from the entry point");
    baseline.learn(vec![(
        ("main".to_owned(), None),
        hotpatch_elf::Symbol {
            name: "main".to_owned(),
            file: None,
            address,
            size: sym.size,
            kind: hotpatch_elf::SymbolKind::Function,
            local: false,
            source: hotpatch_elf::SymbolSource::Symtab,
        },
    )]);
    true
}

/// The changed objects that are the baseline's, and the functions of each
/// that differ from the baseline's (by index of the object).
struct Located {
    objects: BTreeSet<usize>,
    tolerated: BTreeMap<usize, Vec<Mismatch>>,
}

/// Functions each function of `obj` calls or jumps to directly. Taking a
/// function's address is no edge: a call through a pointer can neither be
/// inlined nor rely on the callee's register use (-fipa-ra).
fn reference_graph(obj: &ObjectFile) -> BTreeMap<String, BTreeSet<String>> {
    obj.functions()
        .map(|(f, sec)| {
            let data = &obj.sections[sec].data;
            let names = obj.sections[sec]
                .relocs
                .iter()
                .filter(|r| is_direct_branch(data, r))
                .filter_map(|r| obj.key(r).name().map(str::to_owned))
                .filter(|n| obj.find(n).is_some_and(|t| obj.symbols[t].kind == SymKind::Function))
                .collect();
            (obj.symbols[f].name.clone(), names)
        })
        .collect()
}

/// A `call`/`jmp`/`jcc` whose 32-bit displacement relocation `r` fills.
fn is_direct_branch(data: &[u8], r: &crate::objfile::Reloc) -> bool {
    use object::elf::{R_X86_64_PC32, R_X86_64_PLT32};
    let at = r.offset as usize;
    let before = |n: usize| at.checked_sub(n).and_then(|i| data.get(i)).copied();
    r.r_type == R_X86_64_PLT32
        || (r.r_type == R_X86_64_PC32
            && (matches!(before(1), Some(0xe8 | 0xe9))
                || (before(2) == Some(0x0f) && before(1).is_some_and(|b| (0x80..=0x8f).contains(&b)))))
}

/// Every function reachable from `start` in `graph`, `start` included.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut queue = vec![start.to_owned()];
    while let Some(f) = queue.pop() {
        if seen.insert(f.clone()) {
            queue.extend(graph.get(&f).into_iter().flatten().cloned());
        }
    }
    seen
}

/// A function that differs from the baseline's is harmless only when the
/// patch neither replaces it nor reaches it nor is reached from it, directly
/// or through other functions of the file (the baseline's copy may have
/// inlined a replaced function, or rely on its register use under
/// `-fipa-ra`, where the builder's copy does not).
fn check_tolerated(
    baseline: &Baseline<'_>,
    req: &DiffBuildRequest<'_>,
    located: &Located,
    selections: &BTreeMap<usize, Selection>,
    explain: &mut Explain,
) -> Result<(), DiffBuildError> {
    for (&i, mismatches) in &located.tolerated {
        let (old, new) = (&req.pairs[i].old, &req.pairs[i].new);
        let chosen: BTreeSet<String> = selections
            .get(&i)
            .map(|sel| {
                new.functions()
                    .filter(|(_, sec)| sel.sections.contains(sec))
                    .map(|(f, _)| new.symbols[f].name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let (old_graph, new_graph) = (reference_graph(old), reference_graph(new));
        // What the patch reaches, in either build: computed once per file.
        let reached: BTreeSet<String> =
            chosen.iter().flat_map(|c| reachable(&new_graph, c).into_iter().chain(reachable(&old_graph, c))).collect();
        for m in mismatches {
            let from_it = reachable(&old_graph, &m.function);
            let related = reached.contains(&m.function) || chosen.iter().any(|c| from_it.contains(c));
            if related {
                return Err(not_the_baseline(baseline, old, m.clone()));
            }
            explain.notes.push(format!(
                "{} ({}) is not the baseline's code ({}), but the patch neither replaces, calls nor is called by it",
                m.function, old.path, m
            ));
        }
    }
    Ok(())
}

fn not_the_baseline(baseline: &Baseline<'_>, old: &ObjectFile, mismatch: Mismatch) -> DiffBuildError {
    let list = |v: &[String]| if v.is_empty() { "unknown (no .comment)".to_owned() } else { v.join("; ") };
    let ours = old.compilers.clone();
    let mismatch = if mismatch.function.contains(" (") {
        mismatch
    } else {
        Mismatch { function: format!("{} ({})", mismatch.function, old.path), ..mismatch }
    };
    DiffBuildError::NotTheBaseline { mismatch, ours: list(&ours), theirs: list(&baseline.compilers) }
}

/// Changes a running process cannot take without a restart.
fn refuse_unpatchable(
    req: &DiffBuildRequest<'_>,
    diffs: &[ObjectDiff],
    in_baseline: &BTreeSet<usize>,
) -> Result<(), DiffBuildError> {
    for &i in in_baseline {
        let (pair, diff) = (&req.pairs[i], &diffs[i]);
        if let Some(d) = diff.data.iter().find(|d| d.writable) {
            return Err(DiffBuildError::NeedsBaseline(format!(
                "{} in {}: {}; running processes keep the old layout and value (a shadow variable can add state \
                 instead: include/hotpatch.h)",
                d.name, pair.new.path, d.what
            )));
        }
        if let Some(c) = diff.constructors_changed.first() {
            return Err(DiffBuildError::NeedsBaseline(format!(
                "{} in {} changed: constructors run only when a process starts",
                c, pair.new.path
            )));
        }
        refuse_asm_changes(req, pair, diff)?;
        let ctors = constructor_functions(&pair.old);
        if let Some(f) = diff.functions.iter().find(|f| f.verdict == Verdict::Changed && ctors.contains(&f.name)) {
            return Err(DiffBuildError::NeedsBaseline(format!(
                "constructor {} in {} changed: it ran when each process started and will not run again",
                f.name, pair.new.path
            )));
        }
    }
    Ok(())
}

/// Inline assembly may define symbols, switch sections or hold sites other
/// code patches at run time (alternatives, jump labels), none of which a
/// running process takes from a replacement function; assembly at file
/// scope (`.symver`, top-level `asm`) changes the file itself.
fn refuse_asm_changes(req: &DiffBuildRequest<'_>, pair: &ObjectPair, diff: &ObjectDiff) -> Result<(), DiffBuildError> {
    let file = pair.new.source_file.as_deref().map(|f| f.rsplit('/').next().unwrap_or(f));
    for change in req.asm_changes.iter().filter(|c| Some(c.file.as_str()) == file) {
        let inside = |name: &str| diff.functions.iter().any(|f| f.name == name && f.verdict == Verdict::Changed);
        let at = format!("{}:{}", change.file, change.line);
        match &change.function {
            None => {
                return Err(DiffBuildError::NeedsBaseline(format!(
                    "inline assembly at file scope changed ({at}): it shapes the file, not a function"
                )));
            }
            Some(name) if inside(name) => {
                return Err(DiffBuildError::NeedsBaseline(format!(
                    "inline assembly changed in {name} ({at}): it may define symbols or sections a running \
                     process cannot take from a replacement"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A fix that changes how a function is called (`signature`: arguments or
/// result of another ABI class) is patchable only when nothing left running
/// calls it the old way: not exported, its address not taken, and every
/// direct caller replaced too. Objects built without DWARF are not checked
/// (their callers' code changes with them, but that is not proven).
fn refuse_signature_changes(
    baseline: &Baseline<'_>,
    req: &DiffBuildRequest<'_>,
    diffs: &[ObjectDiff],
    in_baseline: &BTreeSet<usize>,
    selections: &BTreeMap<usize, Selection>,
) -> Result<(), DiffBuildError> {
    for &i in selections.keys() {
        let pair = &req.pairs[i];
        for f in diffs[i].functions.iter().filter(|f| f.verdict == Verdict::Changed) {
            let Some((old, new)) = signature_change(pair, f) else { continue };
            if let Some(why) = old_style_caller(baseline, req, in_baseline, selections, i, f) {
                return Err(DiffBuildError::NeedsBaseline(format!(
                    "the signature of {} in {} changed ({old} became {new}) and {why}",
                    f.name, pair.new.path
                )));
            }
        }
    }
    Ok(())
}

/// The old and new signature of a changed function, if it changed: from
/// DWARF where both builds have it, else from the argument registers the
/// code reads before writing them (a build without `-g`): only a register
/// the new code reads and the old did not counts, as a parameter added.
fn signature_change(pair: &ObjectPair, f: &crate::diff::FunctionDiff) -> Option<(String, String)> {
    if let (Some(old), Some(new)) = (pair.old.signatures.get(&f.name), pair.new.signatures.get(&f.name)) {
        return (old != new).then(|| (old.to_string(), new.to_string()));
    }
    // No DWARF: what the code says, marked as such in the message.
    let reads = |obj: &ObjectFile, sym: usize| -> Option<u16> {
        let s = &obj.symbols[sym];
        let data = &obj.sections[s.section?].data;
        let code = data.get(s.value as usize..(s.value.checked_add(s.size)? as usize).min(data.len()))?;
        Some(crate::argregs::read_at_entry(code))
    };
    let (old, new) = (reads(&pair.old, f.old_sym?)?, reads(&pair.new, f.new_sym)?);
    if new & !old == 0 {
        return None;
    }
    let show = |bits: u16| match crate::argregs::names(bits) {
        names if names.is_empty() => "reads no argument register".to_string(),
        names => format!("reads {}", names.join(" ")),
    };
    Some((show(old), format!("{} (no debug information: judged from the code)", show(new))))
}

/// Why some code left running would still call `f` the old way, if any.
fn old_style_caller(
    baseline: &Baseline<'_>,
    req: &DiffBuildRequest<'_>,
    in_baseline: &BTreeSet<usize>,
    selections: &BTreeMap<usize, Selection>,
    i: usize,
    f: &crate::diff::FunctionDiff,
) -> Option<String> {
    if !f.local && baseline.exports.contains(&f.name) {
        return Some("it is exported: programs and libraries linked against it keep calling it the old way".into());
    }
    // A file-local function is reachable by name from its own file only.
    let files = in_baseline.iter().copied().filter(|&j| !f.local || j == i);
    for j in files {
        let obj = &req.pairs[j].new;
        let replaced = |sec: usize| selections.get(&j).is_some_and(|sel| sel.sections.contains(&sec));
        for (sec, section) in obj.sections.iter().enumerate() {
            let holds_code = matches!(section.class, SectionClass::Text);
            let holds_data = matches!(
                section.class,
                SectionClass::ReadOnly | SectionClass::Writable | SectionClass::Constructors | SectionClass::Tls
            );
            if !holds_code && !holds_data {
                continue;
            }
            for r in section.relocs.iter().filter(|r| obj.key(r).name() == Some(f.name.as_str())) {
                if holds_data {
                    return Some(format!("{} in {} holds its address (a function pointer)", section.name, obj.path));
                }
                let caller = obj
                    .functions()
                    .find(|&(_, s)| s == sec)
                    .map_or_else(|| section.name.clone(), |(g, _)| obj.symbols[g].name.clone());
                if !is_direct_branch(&section.data, r) {
                    return Some(format!("{caller} in {} takes its address (calls through it)", obj.path));
                }
                if !replaced(sec) {
                    return Some(format!("{caller} in {} calls it and is not replaced", obj.path));
                }
            }
        }
    }
    None
}

/// The sections of each fixed object that go into the payload: every
/// changed function, whatever it cannot be separated from (a `.cold` part
/// it jumps into, a new function it calls), and the data they need.
fn select(
    req: &DiffBuildRequest<'_>,
    diffs: &[ObjectDiff],
    in_baseline: &BTreeSet<usize>,
) -> BTreeMap<usize, Selection> {
    let mut out = BTreeMap::new();
    for &i in in_baseline {
        let new = &req.pairs[i].new;
        let diff = &diffs[i];
        let new_syms: BTreeSet<usize> =
            diff.functions.iter().filter(|f| f.verdict == Verdict::New).map(|f| f.new_sym).collect();
        // Callbacks the fix adds are called by the engine, not by the code.
        let mut chosen: BTreeSet<usize> = diff
            .functions
            .iter()
            .filter(|f| f.verdict == Verdict::Changed || (f.verdict == Verdict::New && is_callback(new, f.new_sym)))
            .map(|f| f.new_sym)
            .collect();
        close_over(new, &mut chosen, &new_syms);
        if chosen.is_empty() {
            continue;
        }
        let mut selection = Selection::default();
        for &f in &chosen {
            if let Some(sec) = new.symbols[f].section {
                selection.sections.insert(sec);
            }
        }
        add_data(new, &diff.new_data, &mut selection);
        out.insert(i, selection);
    }
    out
}

/// Says which functions of the files the fix adds go into the patch.
fn note_added(req: &DiffBuildRequest<'_>, added: &BTreeMap<usize, Selection>, explain: &mut Explain) {
    for (k, a) in req.added.iter().enumerate() {
        let obj = &a.object;
        let names: Vec<&str> = match added.get(&k) {
            Some(sel) => obj
                .functions()
                .filter(|(_, sec)| sel.sections.contains(sec))
                .map(|(f, _)| obj.symbols[f].name.as_str())
                .collect(),
            None => Vec::new(),
        };
        explain.notes.push(match names.is_empty() {
            true => format!("{} is a file the fix adds; nothing the patch runs reaches it", obj.path),
            false => format!("{} is a file the fix adds; the patch takes {}", obj.path, names.join(", ")),
        });
    }
}

/// The manifest's patch sites of fixed object `i`: each chosen function the
/// baseline has, at its proven address.
fn sites(
    baseline: &Baseline<'_>,
    req: &DiffBuildRequest<'_>,
    i: usize,
    diff: &ObjectDiff,
    selection: &Selection,
    explain: &mut Explain,
) -> Result<Vec<FunctionPatch>, DiffBuildError> {
    let (old, new) = (&req.pairs[i].old, &req.pairs[i].new);
    let mut out = Vec::new();
    for f in &diff.functions {
        let in_patch = new.symbols[f.new_sym].section.is_some_and(|s| selection.sections.contains(&s));
        if !in_patch {
            continue;
        }
        let Some(o) = f.old_sym else { continue };
        let s = &old.symbols[o];
        if s.name.contains(".cold") {
            // Entered only by jumps from its parent, which is replaced too.
            continue;
        }
        let Ok(at) = baseline.lookup(&s.name, s.local, old.source_file.as_deref()) else {
            explain.notes.push(format!("{} ({}) is not in the baseline: nothing to redirect", s.name, old.path));
            continue;
        };
        if at.size < MIN_SITE_SIZE {
            return Err(DiffBuildError::NeedsBaseline(format!(
                "{} is {} bytes in the baseline, too short for the {MIN_SITE_SIZE}-byte jump",
                s.name, at.size
            )));
        }
        let bytes = baseline.function_bytes(&at).ok_or_else(|| {
            DiffBuildError::Unsupported(format!("{} is not in an executable segment of the baseline", s.name))
        })?;
        out.push(FunctionPatch {
            symbol: s.name.clone(),
            file: if s.local { old.source_file.clone() } else { None },
            size: at.size,
            original_sha256: sha256_hex(bytes),
            replacement: payload_name(i, new, f.new_sym),
            address: Some(at.address),
        });
    }
    Ok(out)
}

/// A replaced function may use the process's own thread-local variables
/// (the engine links every x86-64 access model to them), but not one the fix
/// adds: a running process cannot grow the TLS block of every thread.
fn refuse_new_tls(obj: &ObjectFile, new_data: &BTreeSet<String>, selection: &Selection) -> Result<(), DiffBuildError> {
    for &sec in &selection.sections {
        for r in obj.sections[sec].relocs.iter().filter(|r| is_tls(r.r_type)) {
            if let RefKey::Named { name, .. } = obj.key(r)
                && new_data.contains(&name)
            {
                let user = obj.owner_function(sec).map_or(obj.sections[sec].name.as_str(), |f| &obj.symbols[f].name);
                return Err(DiffBuildError::NeedsBaseline(format!(
                    "{user} uses the thread-local variable {name}, which the fix adds: a running process cannot \
                     grow its threads' thread-local storage (keep such state in a shadow variable instead)"
                )));
            }
        }
    }
    Ok(())
}

fn report_functions(
    req: &DiffBuildRequest<'_>,
    diffs: &[ObjectDiff],
    in_baseline: &BTreeSet<usize>,
    selections: &BTreeMap<usize, Selection>,
    explain: &mut Explain,
) {
    for &i in in_baseline {
        let new = &req.pairs[i].new;
        let changed: BTreeSet<&str> = diffs[i]
            .functions
            .iter()
            .filter(|f| matches!(f.verdict, Verdict::Changed | Verdict::New))
            .map(|f| f.name.as_str())
            .collect();
        for f in &diffs[i].functions {
            let in_patch = new.symbols[f.new_sym]
                .section
                .is_some_and(|s| selections.get(&i).is_some_and(|sel| sel.sections.contains(&s)));
            if f.verdict == Verdict::Unchanged && !in_patch {
                continue;
            }
            explain.functions.push(FunctionReport {
                object: new.path.clone(),
                name: f.name.clone(),
                verdict: f.verdict.clone(),
                in_patch,
                reasons: reasons(f, &req.touched, &changed, in_patch),
            });
        }
    }
}

/// Binds what the payload refers to outside itself to the baseline.
struct BaselineBinder<'b, 'a> {
    baseline: &'b Baseline<'a>,
}

impl BaselineBinder<'_, '_> {
    /// A function whose address comes from a reference link not proven for it.
    fn unproven(&self, at: &hotpatch_elf::Symbol) -> bool {
        let proven = self.baseline.proven_functions.as_ref();
        Baseline::is_function(at)
            && proven.is_some_and(|p| !p.contains(&at.address))
            && !self.baseline.is_learned(at.address)
    }
}

impl Binder for BaselineBinder<'_, '_> {
    fn bind(&mut self, obj: &ObjectFile, sym: usize) -> Result<Binding, String> {
        let s = &obj.symbols[sym];
        if !s.local && (s.section.is_none() || self.baseline.exports.contains(&s.name)) {
            // As the dynamic linker binds it in the process: an import, or an
            // export another object may interpose.
            if s.section.is_none()
                && !self.baseline.exports.contains(&s.name)
                && let Ok(at) = self.baseline.lookup(&s.name, false, None)
            {
                return Ok(Binding::Address(at.address));
            }
            return Ok(Binding::ByName);
        }
        match self.baseline.lookup(&s.name, s.local, obj.source_file.as_deref()) {
            Ok(at) if self.unproven(&at) => Err(format!(
                "the patch calls {} of {}, whose code in the baseline differs from the builder's build at the \
                 address its symbols give; give the baseline's debug file",
                s.name, obj.path
            )),
            Ok(at) => Ok(Binding::Address(at.address)),
            Err(e) => Err(format!(
                "the patch refers to {} of {}, which cannot be located in the baseline ({e}); give its debug file",
                s.name, obj.path
            )),
        }
    }
}
