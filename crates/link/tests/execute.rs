//! The strongest check: linked code runs. The image is mapped into this test
//! process with the engine's protections and called; it calls libc (found
//! with dlsym) and changes a global of this process.

mod common;

use common::{Mapping, PAYLOAD, PIC, compile, dlsym, function, stub_target};
use hotpatch_link::{LinkPlan, LinkedImage};
use std::ffi::{CStr, c_char, c_int};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// The host global the payload increments through its GOT.
static HP_TEST_COUNTER: AtomicI64 = AtomicI64::new(0);
/// The payload increments the counter non-atomically; tests run in parallel.
static EXERCISE: Mutex<()> = Mutex::new(());

const HEADER: u64 = 4096;
const TWO_GIB: u64 = 1 << 31;

type Replacement = unsafe extern "C" fn(*mut c_char, usize, *const c_char) -> c_int;
type IntFn = unsafe extern "C" fn(c_int, c_int) -> c_int;

fn plan() -> LinkPlan {
    let mut flags = PIC.to_vec();
    flags.push("-fcommon");
    LinkPlan::new(&compile(PAYLOAD, &flags), HEADER).expect("plan")
}

fn resolve(name: &str) -> Option<u64> {
    match name {
        "hp_test_counter" => Some(HP_TEST_COUNTER.as_ptr() as u64),
        _ => dlsym(name),
    }
}

fn link_into(plan: &LinkPlan, map: &Mapping) -> LinkedImage {
    let image = plan.link(map.addr, &mut resolve).expect("link");
    map.load(&image, HEADER);
    image
}

/// Calls the payload's functions and checks what they did.
fn exercise(image: &LinkedImage) {
    let _serial = EXERCISE.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: these addresses are the linked, executable payload functions
    // with exactly these C signatures.
    let (replacement, apply): (Replacement, IntFn) = unsafe {
        (
            std::mem::transmute::<usize, Replacement>(image.symbols["replacement"] as usize),
            std::mem::transmute::<usize, IntFn>(image.symbols["apply"] as usize),
        )
    };
    let before = HP_TEST_COUNTER.load(Ordering::SeqCst);
    let mut out = [0 as c_char; 128];
    for round in 1..=2 {
        // SAFETY: out is writable for its full length; the name is NUL-terminated.
        let n = unsafe { replacement(out.as_mut_ptr(), out.len(), c"patched".as_ptr()) };
        // SAFETY: snprintf NUL-terminated the buffer.
        let text = unsafe { CStr::from_ptr(out.as_ptr()) }.to_str().unwrap().to_string();
        assert_eq!(text, format!("hi patched len=7 helper=42 calls={round}"));
        assert_eq!(n as usize, text.len());
    }
    assert!(HP_TEST_COUNTER.load(Ordering::SeqCst) >= before + 2, "the host global was not incremented");
    // SAFETY: apply(int, int) -> int, through the relocated function table.
    assert_eq!(unsafe { apply(0, 7) }, 14);
    // SAFETY: as above.
    assert_eq!(unsafe { apply(1, 7) }, 21);
    // The COMMON block lives in the writable segment and was written by the code.
    // SAFETY: a 4-byte aligned int inside the mapped read-write segment.
    let common = unsafe { *(image.symbols["hp_common_block"] as *const c_int) };
    assert_eq!(common, 4);
}

/// Destinations of the calls in `replacement` that go through stubs.
fn stubbed_calls(image: &LinkedImage) -> Vec<u64> {
    function(image, "replacement")
        .iter()
        .filter(|i| i.text.starts_with("call") || i.text.starts_with("jmp"))
        .filter_map(|i| i.target())
        .filter_map(|t| stub_target(image, t))
        .collect()
}

fn far_from(addr: u64, a: u64) -> bool {
    addr.abs_diff(a) > TWO_GIB
}

#[test]
fn runs_when_mapped_far_from_libc_through_stubs() {
    let plan = plan();
    let len = plan.region_size() as usize;
    let strlen = dlsym("strlen").unwrap();
    // 32 TiB and upwards: far from this PIE, its heap and the libraries.
    let map = Mapping::first_free((0..).map(|i| 0x2000_0000_0000 + i * 0x10_0000_0000), len);
    assert!(far_from(map.addr, strlen), "region is not far from libc: test would not exercise stubs");
    let image = link_into(&plan, &map);
    let mut stubbed = stubbed_calls(&image);
    stubbed.sort();
    let mut libc = vec![strlen, dlsym("snprintf").unwrap()];
    libc.sort();
    assert_eq!(stubbed, libc, "far libc calls go through stubs");
    exercise(&image);
}

#[test]
fn runs_when_mapped_near_libc_with_direct_calls() {
    let plan = plan();
    let len = plan.region_size() as usize;
    let strlen = dlsym("strlen").unwrap();
    let snprintf = dlsym("snprintf").unwrap();
    // Below libc, within reach: try a few holes from 64 MiB downwards.
    let map = Mapping::first_free((1..).map(|i| strlen.saturating_sub(i * 0x400_0000)), len);
    assert!(!far_from(map.addr, strlen) && !far_from(map.addr, snprintf));
    let image = link_into(&plan, &map);
    assert_eq!(stubbed_calls(&image), Vec::<u64>::new(), "near libc calls are direct");
    exercise(&image);
}

#[test]
fn weak_undefined_function_may_be_absent_or_present() {
    let src = r#"
        extern int hp_maybe(int) __attribute__((weak));
        int call_maybe(int x) { return hp_maybe ? hp_maybe(x) : -1; }
    "#;
    let plan = LinkPlan::new(&compile(src, PIC), 0).expect("plan");
    assert_eq!(plan.undefined_symbols(), vec!["hp_maybe".to_string()]);
    let len = plan.region_size() as usize;

    let map = Mapping::first_free((0..).map(|i| 0x2100_0000_0000 + i * 0x10_0000_0000), len);
    let image = plan.link(map.addr, &mut |_| None).expect("weak undefined links as 0");
    map.load(&image, 0);
    // SAFETY: call_maybe(int) -> int in the loaded image.
    let f: unsafe extern "C" fn(c_int) -> c_int = unsafe { std::mem::transmute(image.symbols["call_maybe"] as usize) };
    // SAFETY: as above.
    assert_eq!(unsafe { f(5) }, -1);
    drop(map);

    extern "C" fn maybe(x: c_int) -> c_int {
        x * 100
    }
    let map = Mapping::first_free((0..).map(|i| 0x2200_0000_0000 + i * 0x10_0000_0000), len);
    let image = plan
        .link(map.addr, &mut |n| (n == "hp_maybe").then_some(maybe as extern "C" fn(c_int) -> c_int as usize as u64))
        .expect("link");
    map.load(&image, 0);
    // SAFETY: as above.
    let f: unsafe extern "C" fn(c_int) -> c_int = unsafe { std::mem::transmute(image.symbols["call_maybe"] as usize) };
    // SAFETY: as above.
    assert_eq!(unsafe { f(5) }, 500);
}

#[test]
fn unwind_tables_let_an_unwinder_walk_out_of_the_region() {
    let src = r#"
        #include <unwind.h>
        static _Unwind_Reason_Code hp_count(struct _Unwind_Context *ctx, void *arg) {
            (void)ctx;
            ++*(int *)arg;
            return _URC_NO_REASON;
        }
        __attribute__((noinline)) int hp_depth(void) {
            int n = 0;
            _Unwind_Backtrace(hp_count, &n);
            return n;
        }
    "#;
    let plan = LinkPlan::new(&compile(src, PIC), 0).expect("plan");
    let map = Mapping::first_free((0..).map(|i| 0x2300_0000_0000 + i * 0x10_0000_0000), plan.region_size() as usize);
    let image = plan.link(map.addr, &mut |n| dlsym(n)).expect("link");
    map.load(&image, 0);
    let eh = image.eh_frame.clone().expect("unwind tables");
    // SAFETY: hp_depth(void) -> int in the loaded image.
    let depth: unsafe extern "C" fn() -> c_int =
        unsafe { std::mem::transmute::<usize, _>(image.symbols["hp_depth"] as usize) };
    type FrameFn = unsafe extern "C" fn(*const u8);
    let register: FrameFn =
        unsafe { std::mem::transmute::<usize, FrameFn>(dlsym("__register_frame").expect("libgcc_s") as usize) };
    let deregister: FrameFn =
        unsafe { std::mem::transmute::<usize, FrameFn>(dlsym("__deregister_frame").expect("libgcc_s") as usize) };

    // SAFETY: as above.
    let unknown = unsafe { depth() };
    // SAFETY: the tables are relocated, zero-terminated and mapped until deregistered below.
    unsafe { register(eh.start as *const u8) };
    // SAFETY: as above.
    let known = unsafe { depth() };
    // SAFETY: same pointer as registered; the mapping is still there.
    unsafe { deregister(eh.start as *const u8) };
    assert!(known > unknown + 2, "unwinder walked {known} frames with the region's tables, {unknown} without");
}

#[test]
fn cxx_exception_is_caught_inside_the_region_once_its_tables_are_registered() {
    let src = r#"
        #include <string>
        #include <stdexcept>
        extern "C" int hp_parse(const char *s) {
            try { return std::stoi(s); } catch (const std::exception &) { return -1; }
        }
    "#;
    // SAFETY: loading the system C++ runtime so its symbols resolve with dlsym.
    let lib = unsafe { libc::dlopen(c"libstdc++.so.6".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    assert!(!lib.is_null(), "libstdc++.so.6 not loadable");
    let obj =
        common::compile_to(src, &["-fPIC", "-O2", "-ffunction-sections", "-fdata-sections", "-x", "c++"], &["-c"], "o");
    let plan = LinkPlan::new(&obj, 0).expect("plan");
    assert!(plan.undefined_symbols().iter().any(|s| s == "__gxx_personality_v0"));
    let map = Mapping::first_free((0..).map(|i| 0x2400_0000_0000 + i * 0x10_0000_0000), plan.region_size() as usize);
    let image = plan.link(map.addr, &mut |n| dlsym(n)).expect("link");
    map.load(&image, 0);
    let eh = image.eh_frame.clone().expect("unwind tables");
    // SAFETY: hp_parse(const char *) -> int in the loaded image.
    let parse: unsafe extern "C" fn(*const c_char) -> c_int =
        unsafe { std::mem::transmute::<usize, _>(image.symbols["hp_parse"] as usize) };
    type FrameFn = unsafe extern "C" fn(*const u8);
    // SAFETY: libgcc_s's frame registration functions have this signature.
    let (register, deregister): (FrameFn, FrameFn) = unsafe {
        (
            std::mem::transmute::<usize, FrameFn>(dlsym("__register_frame").expect("libgcc_s") as usize),
            std::mem::transmute::<usize, FrameFn>(dlsym("__deregister_frame").expect("libgcc_s") as usize),
        )
    };
    // SAFETY: relocated, terminated tables, mapped until deregistered.
    unsafe { register(eh.start as *const u8) };
    // SAFETY: NUL-terminated strings; the throwing case is caught inside hp_parse.
    let (ok, bad) = unsafe { (parse(c"1234".as_ptr()), parse(c"not a number".as_ptr())) };
    // SAFETY: as registered.
    unsafe { deregister(eh.start as *const u8) };
    assert_eq!((ok, bad), (1234, -1));
}
