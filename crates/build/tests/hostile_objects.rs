//! The builder reads objects and baselines it did not make: a corrupted or
//! hostile one gets an error or an answer, never a panic. Real objects built
//! by gcc are mutated byte by byte and fed through parse, diff, run-pre
//! matching and payload writing.

use hotpatch_build::{DiffBuildRequest, ObjectFile, ObjectPair, build_from_objects};
use proptest::prelude::*;
use std::process::Command;
use std::sync::OnceLock;

const SOURCE: &str = r#"
#include <string.h>
static int calls;
static const int table[4] = {1, 2, 3, 5};
int pick(int i) { return table[i & 3] + ++calls; }
int copy(char *dst, const char *src, int n) {
    switch (n) { case 0: return 0; case 1: return 1; case 2: return 4; case 3: return 9; case 4: return 16; case 5: return 25; }
    memcpy(dst, src, n > 8 ? 8 : n);
    return (int)strlen(src);
}
const char *name(void) { return "name"; }
"#;

/// (object, linked library, fixed object) built once with gcc, as the
/// builder's wrapper builds.
fn inputs() -> &'static (Vec<u8>, Vec<u8>, Vec<u8>) {
    static INPUTS: OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.c"), SOURCE).unwrap();
        let gcc = |args: &[&str]| {
            let out = Command::new("gcc").args(args).current_dir(dir.path()).output().expect("gcc");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        };
        gcc(&["-O2", "-g", "-fPIC", "-ffunction-sections", "-c", "x.c", "-o", "x.o"]);
        gcc(&["-shared", "-o", "libx.so", "x.o"]);
        let fixed = dir.path().join("fixed");
        std::fs::create_dir(&fixed).unwrap();
        std::fs::write(fixed.join("x.c"), SOURCE.replace("++calls", "(calls += 2)").replace("n > 8 ? 8", "n > 6 ? 6"))
            .unwrap();
        gcc(&["-O2", "-g", "-fPIC", "-ffunction-sections", "-c", "fixed/x.c", "-o", "fixed/x.o"]);
        let read = |p: &str| std::fs::read(dir.path().join(p)).unwrap();
        (read("x.o"), read("libx.so"), read("fixed/x.o"))
    })
}

fn mutate(bytes: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &(at, b) in edits {
        let i = at % out.len();
        out[i] = b;
    }
    out
}

fn request<'a>(baseline: &'a [u8], pairs: Vec<ObjectPair>, references: Vec<(String, Vec<u8>)>) -> DiffBuildRequest<'a> {
    DiffBuildRequest {
        baseline,
        baseline_name: "libx.so".into(),
        debug_file: None,
        references,
        pairs,
        added: Vec::new(),
        touched: Default::default(),
        line_shifts: Default::default(),
        asm_changes: Vec::new(),
        unchanged: &Vec::new,
        patch_id: None,
        product: "x".into(),
        level: 1,
        classification: hotpatch_format::Classification::Security,
        cves: Vec::new(),
        description: String::new(),
        created: "2026-12-01T00:00:00Z".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_objects_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..12)) {
        let (object, library, _) = inputs();
        let new = mutate(object, &edits);
        if let (Ok(old), Ok(mutated)) = (ObjectFile::parse("x.o", object), ObjectFile::parse("x.o", &new)) {
            // Its DWARF too: the signatures are read from the debug sections.
            let (old, new) = (old.with_signatures(object), mutated.with_signatures(&new));
            let _ = hotpatch_build::diff::diff_objects(&old, &new, Some(&[(3, 1)]));
            let _ = build_from_objects(&request(library, vec![ObjectPair { old, new }], Vec::new()));
        }
    }

    #[test]
    fn mutated_baselines_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..12)) {
        let (object, library, fixed) = inputs();
        let baseline = mutate(library, &edits);
        let old = ObjectFile::parse("x.o", object).unwrap();
        let new = ObjectFile::parse("x.o", fixed).unwrap();
        let references = vec![("libx.so".to_owned(), library.clone())];
        let _ = build_from_objects(&request(&baseline, vec![ObjectPair { old, new }], references));
    }
}

#[test]
fn a_real_object_reads_as_functions_and_data() {
    let (object, library, fixed) = inputs();
    let obj = ObjectFile::parse("x.o", object).unwrap();
    let functions: Vec<&str> = obj.functions().map(|(s, _)| obj.symbols[s].name.as_str()).collect();
    for f in ["pick", "copy", "name"] {
        assert!(functions.contains(&f), "{f} in {functions:?}");
    }
    let diff = hotpatch_build::diff::diff_objects(&obj, &obj, None);
    assert!(diff.is_empty(), "an object does not differ from itself");
    // The unmutated inputs build: pick and copy changed, against the library.
    let new = ObjectFile::parse("x.o", fixed).unwrap();
    let references = vec![("libx.so".to_owned(), library.clone())];
    let built = build_from_objects(&request(library, vec![ObjectPair { old: obj, new }], references)).unwrap();
    let mut sites: Vec<&str> = built.manifest.functions.iter().map(|f| f.symbol.as_str()).collect();
    sites.sort();
    assert_eq!(sites, ["copy", "pick"]);
}

/// The payload carries the unwind records of exactly the functions it holds,
/// each bound to its copy: the engine can unwind a thread stopped inside them.
#[test]
fn the_payload_carries_the_replaced_functions_unwind_records() {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
    let (object, library, fixed) = inputs();
    let old = ObjectFile::parse("x.o", object).unwrap();
    let new = ObjectFile::parse("x.o", fixed).unwrap();
    let references = vec![("libx.so".to_owned(), library.clone())];
    let built = build_from_objects(&request(library, vec![ObjectPair { old, new }], references)).unwrap();
    let payload = object::File::parse(built.payload.as_slice()).unwrap();
    let eh = payload.section_by_name(".eh_frame").expect("an .eh_frame in the payload");
    let mut covered: Vec<String> = eh
        .relocations()
        .filter_map(|(_, r)| match r.target() {
            RelocationTarget::Symbol(i) => payload.symbol_by_index(i).ok(),
            _ => None,
        })
        .filter_map(|s| s.section_index())
        .filter_map(|i| payload.section_by_index(i).ok()?.name().ok().map(str::to_owned))
        .collect();
    covered.sort();
    assert_eq!(covered, [".text.copy", ".text.pick"], "one FDE per replaced function, none for name()");
}
