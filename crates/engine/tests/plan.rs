//! The plan of an apply, made from a gcc-built library and payload without
//! any process; and one plan serving several live processes.

mod common;

use common::*;
use hotpatch_engine::plan::{Bindings, TargetPlan};
use hotpatch_engine::{ApplyOptions, EngineError, PlanCache, PlanUse};
use hotpatch_format::VerifiedPackage;
use std::collections::BTreeMap;
use std::path::Path;

const LIB: &str = "int base = 2;\n__attribute__((noinline)) int lib_check(int x) { return x * 10 + base; }\n";
const MAIN: &str = "#include <stdio.h>\n#include <unistd.h>\nint lib_check(int);\n\
    int main(void){ setvbuf(stdout,0,_IOLBF,0); for(;;){ printf(\"%d\\n\", lib_check(4)); usleep(5000);} }\n";
const FIX: &str = "extern int base; int lib_check_v2(int x) { return x * 100 + base - 2; }\n";

fn build(dir: &Dir) {
    dir.write("lib.c", LIB);
    dir.write("main.c", MAIN);
    dir.write("fix.c", FIX);
    dir.gcc(&["-O1", "-shared", "-fPIC", "-o", "libdemo.so", "lib.c"]);
    dir.gcc(&["-O1", "-o", "main", "main.c", "-L.", "-ldemo"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix.c"]);
}

fn package(dir: &Dir, publisher: &Publisher) -> VerifiedPackage {
    publisher.package(&dir.path("libdemo.so"), &dir.path("fix.o"), &["lib_check=lib_check_v2"], 1)
}

fn plan_of(dir: &Dir, pkg: &VerifiedPackage) -> Result<TargetPlan, EngineError> {
    TargetPlan::new(pkg, std::fs::read(dir.path("libdemo.so")).expect("read lib"), None)
}

/// A symbol's value as binutils' `nm` reads it (not our ELF reader).
fn nm(file: &Path, name: &str) -> u64 {
    let out = std::process::Command::new("nm").arg(file).output().expect("run nm");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.ends_with(&format!(" {name}"))).expect("symbol in nm output");
    u64::from_str_radix(line.split_whitespace().next().expect("value"), 16).expect("hex value")
}

fn bound(name: &str, address: u64) -> Bindings {
    Bindings { resolved: BTreeMap::from([(name.to_string(), address)]), unresolved: BTreeMap::new() }
}

#[test]
fn plan_locates_the_sites_and_lays_out_the_payload_without_a_process() {
    let dir = Dir::new();
    build(&dir);
    let pkg = package(&dir, &Publisher::new());
    let plan = plan_of(&dir, &pkg).expect("plan");
    assert_eq!(plan.build_id, pkg.manifest.target.build_id);
    assert_eq!(plan.sites.len(), 1);
    assert_eq!(plan.sites[0].link_address, nm(&dir.path("libdemo.so"), "lib_check"));
    assert_eq!(plan.sites[0].replacement, "lib_check_v2");
    assert_eq!(plan.undefined_symbols(), vec!["base".to_string()]);
    assert!(plan.tls_symbols().is_empty());
    assert!(plan.header_len() > 0 && plan.header_len().is_multiple_of(4096));
    assert!(plan.region_size() > plan.header_len() && plan.region_size().is_multiple_of(4096));
}

#[test]
fn linking_is_the_same_for_the_same_layout_and_moves_with_the_addresses() {
    let dir = Dir::new();
    build(&dir);
    let pkg = package(&dir, &Publisher::new());
    let plan = plan_of(&dir, &pkg).expect("plan");
    let base_var = nm(&dir.path("libdemo.so"), "base");
    let (bias, region) = (0x7f00_0000_0000u64, 0x7eff_fff0_0000u64);
    let no_tls = BTreeMap::new();
    let a = plan.link_at(region, bias, &bound("base", bias + base_var), &no_tls).expect("link");
    let again = plan.link_at(region, bias, &bound("base", bias + base_var), &no_tls).expect("link");
    assert_eq!(a.image, again.image, "a linked image is a function of its layout: it may be reused");

    // The whole layout one MiB higher: the site's jump (relative) is the same bytes.
    let d = 0x10_0000;
    let b = plan.link_at(region + d, bias + d, &bound("base", bias + d + base_var), &no_tls).expect("link");
    assert_eq!(a.jumps[0].address + d, b.jumps[0].address);
    assert_eq!(a.jumps[0].replacement + d, b.jumps[0].replacement);
    assert_eq!(a.jumps[0].jump, b.jumps[0].jump);
    assert_eq!(a.jumps[0].jump[0], 0xe9);
    assert_eq!(a.jumps[0].address, bias + plan.sites[0].link_address);
    assert_ne!(a.image.bytes, b.image.bytes, "absolute addresses (GOT) moved with the layout");
}

#[test]
fn a_name_the_process_lacks_is_refused_with_the_resolvers_reason() {
    let dir = Dir::new();
    build(&dir);
    let pkg = package(&dir, &Publisher::new());
    let plan = plan_of(&dir, &pkg).expect("plan");
    let why = "symbol base is not defined in the target nor exported by any object the process maps";
    let missing =
        Bindings { resolved: BTreeMap::new(), unresolved: BTreeMap::from([("base".to_string(), why.to_string())]) };
    match plan.link_at(0x7eff_fff0_0000, 0x7f00_0000_0000, &missing, &BTreeMap::new()) {
        Err(EngineError::Symbol(m)) => assert_eq!(m, why),
        other => panic!("expected the resolver's reason, got {other:?}"),
    }
}

#[test]
fn a_plan_refuses_what_the_target_or_payload_lacks() {
    let dir = Dir::new();
    build(&dir);
    let publisher = Publisher::new();
    let lib = dir.path("libdemo.so");
    let fix = dir.path("fix.o");

    let mut no_replacement = publisher.manifest(&lib, &fix, &["lib_check=lib_check_v2"], 1);
    no_replacement.functions[0].replacement = "lib_check_v9".into();
    match plan_of(&dir, &publisher.sign(no_replacement, &fix)) {
        Err(EngineError::Symbol(m)) => assert!(m.contains("lib_check_v9"), "{m}"),
        other => panic!("expected a missing replacement, got {other:?}"),
    }

    let mut wrong_size = publisher.manifest(&lib, &fix, &["lib_check=lib_check_v2"], 1);
    wrong_size.functions[0].size += 1;
    match plan_of(&dir, &publisher.sign(wrong_size, &fix)) {
        Err(EngineError::SiteMismatch { function, problem }) => {
            assert_eq!(function, "lib_check");
            assert!(problem.contains("bytes"), "{problem}");
        }
        other => panic!("expected a size mismatch, got {other:?}"),
    }

    // Another build's file: the site's symbol is not there.
    dir.write("other.c", "int unrelated(int x) { return x; }\n");
    dir.gcc(&["-O1", "-shared", "-fPIC", "-o", "libother.so", "other.c"]);
    let pkg = package(&dir, &publisher);
    let other = std::fs::read(dir.path("libother.so")).expect("read");
    assert!(matches!(TargetPlan::new(&pkg, other, None), Err(EngineError::Symbol(_))));
}

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: std::time::Duration::from_secs(10), ..Default::default() }
}

#[test]
fn one_plan_serves_processes_and_one_image_those_with_the_same_layout() {
    let dir = Dir::new();
    build(&dir);
    let pkg = package(&dir, &Publisher::new());
    let libdir = dir.0.path().to_string_lossy().into_owned();
    let main = dir.path("main").to_string_lossy().into_owned();
    let env = [("LD_LIBRARY_PATH", libdir.as_str())];
    // Without address randomisation two processes of one program have one layout.
    let setarch = Path::new("/usr/bin/setarch");
    let same = [
        Proc::spawn_args(setarch, &["x86_64", "-R", &main], &env),
        Proc::spawn_args(setarch, &["x86_64", "-R", &main], &env),
    ];
    let randomised = Proc::spawn(&dir.path("main"), &env);
    for p in same.iter().chain([&randomised]) {
        p.expect_line("42", 100);
    }
    let mut cache = PlanCache::new();
    let first = hotpatch_engine::apply_planned(same[0].pid(), &pkg, &opts(), &mut cache).expect("apply 1");
    assert_eq!(first.plan, PlanUse { plan_reused: false, link_reused: false });
    let second = hotpatch_engine::apply_planned(same[1].pid(), &pkg, &opts(), &mut cache).expect("apply 2");
    assert_eq!(second.plan, PlanUse { plan_reused: true, link_reused: true });
    assert_eq!(first.region_start, second.region_start);
    let third = hotpatch_engine::apply_planned(randomised.pid(), &pkg, &opts(), &mut cache).expect("apply 3");
    assert_eq!(third.plan, PlanUse { plan_reused: true, link_reused: false });
    for p in same.iter().chain([&randomised]) {
        p.expect_line("400", 2000);
    }
    let stats = cache.stats();
    assert_eq!((stats.plans_made, stats.plans_reused), (1, 2));
    assert_eq!((stats.links_made, stats.links_reused), (2, 1));
    // The reused image carries each process's own header: rollback reads it.
    hotpatch_engine::rollback(same[1].pid(), None, &opts()).expect("rollback");
    same[1].expect_line("42", 2000);
}
