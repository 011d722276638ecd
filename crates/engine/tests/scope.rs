//! The payload's undefined symbols bind as ld.so binds them: executable, then
//! `LD_PRELOAD`, then `DT_NEEDED` breadth first, not in address order.

mod common;

use common::*;
use hotpatch_engine::{ApplyOptions, procfs};
use std::time::Duration;

fn opts() -> ApplyOptions {
    ApplyOptions { timeout: Duration::from_secs(10), ..Default::default() }
}

/// Interposes libc's `sleep`: never sleeps, answers 7000 + its argument.
const INTERPOSER: &str = "unsigned int sleep(unsigned int s) { return 7000 + s; }\n";

/// Calls `sleep(0)`: 0 from libc, 7000 from the interposer.
const FIX_SLEEP: &str = "#include <unistd.h>\nint check_v2(int x) { return (int)sleep(0) + x; }\n";

struct Preloaded {
    dir: Dir,
    preload: String,
}

fn build() -> Preloaded {
    let dir = Dir::new();
    dir.write("svc.c", SVC);
    dir.write("interpose.c", INTERPOSER);
    dir.write("fix.c", FIX_SLEEP);
    dir.gcc(&["-O1", "-o", "svc", "svc.c"]);
    dir.gcc(&["-O1", "-shared", "-fPIC", "-o", "libinterpose.so", "interpose.c"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix.c"]);
    let preload = dir.path("libinterpose.so").to_string_lossy().into_owned();
    Preloaded { dir, preload }
}

#[test]
fn payload_call_binds_to_the_preloaded_interposer() {
    let p = build();
    let publisher = Publisher::new();
    let pkg = publisher.package(&p.dir.path("svc"), &p.dir.path("fix.o"), &["check=check_v2"], 1);
    let proc = Proc::spawn(&p.dir.path("svc"), &[("LD_PRELOAD", &p.preload)]);
    proc.expect_line("42", 100);

    // The premise: the interposer is mapped above libc, so address order
    // would find libc's sleep first.
    let maps = procfs::maps(proc.pid()).expect("maps");
    let lowest = |needle: &str| maps.iter().filter(|m| m.path.contains(needle)).map(|m| m.start).min();
    let (pre, libc) = (lowest("libinterpose.so"), lowest("/libc.so"));
    assert!(pre.is_some() && libc.is_some() && pre > libc, "premise: interposer above libc ({pre:x?} vs {libc:x?})");

    hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply");
    proc.expect_line("7001", 200);
    hotpatch_engine::rollback(proc.pid(), None, &opts()).expect("rollback");
    proc.expect_line("42", 200);
}

#[test]
fn without_the_preload_the_same_payload_binds_to_libc() {
    let p = build();
    let publisher = Publisher::new();
    let pkg = publisher.package(&p.dir.path("svc"), &p.dir.path("fix.o"), &["check=check_v2"], 1);
    let proc = Proc::spawn(&p.dir.path("svc"), &[]);
    proc.expect_line("42", 100);
    hotpatch_engine::apply(proc.pid(), &pkg, &opts()).expect("apply");
    proc.expect_line("1", 200);
}

#[test]
fn link_map_chain_read_from_the_process_is_the_lookup_order() {
    let p = build();
    let proc = Proc::spawn(&p.dir.path("svc"), &[("LD_PRELOAD", &p.preload)]);
    proc.expect_line("42", 100);
    let pid = proc.pid();
    let mem = procfs::ProcessMemory::open(pid, false).expect("mem");
    let chain = hotpatch_engine::scope::process_chain(pid, &mem);
    let names: Vec<&str> = chain.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.first(), Some(&""), "the executable heads the chain: {names:?}");
    let at = |needle: &str| names.iter().position(|n| n.contains(needle));
    let (pre, libc) = (at("libinterpose.so"), at("libc.so"));
    assert!(pre.is_some() && pre < libc, "preload before libc: {names:?}");

    let maps = procfs::maps(pid).expect("maps");
    let modules = hotpatch_engine::modules::loaded_modules(pid, &maps);
    let exe = modules.iter().find(|m| m.path.ends_with("/svc")).expect("exe mapped");
    let order: Vec<String> = hotpatch_engine::scope::lookup_scope(pid, &mem, &modules, exe.inode)
        .iter()
        .map(|m| m.file_name().to_owned())
        .collect();
    assert_eq!(order.first().map(String::as_str), Some("libinterpose.so"), "{order:?}");
    assert!(order.iter().position(|n| n.starts_with("libc.so")) > Some(0), "{order:?}");
    assert!(!order.iter().any(|n| n == "svc"), "the target is not among the others: {order:?}");
}
