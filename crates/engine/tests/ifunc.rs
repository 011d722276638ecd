//! IFUNCs outside glibc: a payload calling an indirect function of another
//! library (which this test process does not map, so its resolver can only
//! run in the target) and one of the executable itself.

mod common;

use common::*;
use hotpatch_engine::ApplyOptions;

/// `pick` resolves to `x + 1000` on any x86-64 (SSE2 is baseline).
const LIBRARY: &str = r#"
static int pick_a(int x) { return x + 1000; }
static int pick_b(int x) { return x + 2000; }
static void *pick_resolver(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse2") ? (void *)pick_a : (void *)pick_b;
}
int pick(int x) __attribute__((ifunc("pick_resolver")));
"#;

const APP: &str = r#"
#include <stdio.h>
#include <unistd.h>
int pick(int x);
int counter = 41;
static int twice_plain(int x) { return 2 * x; }
static void *twice_resolver(void) { return (void *)twice_plain; }
int twice(int x) __attribute__((ifunc("twice_resolver")));
__attribute__((noinline)) int check(int x) { return x + counter; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("started %d %d\n", pick(0), twice(0));
    for (;;) { printf("%d\n", check(1)); usleep(5000); }
}
"#;

const FIX: &str = r#"
int pick(int x);
int twice(int x);
int check_v2(int x) { return pick(x) + twice(x); }
"#;

#[test]
fn ifuncs_of_another_library_and_of_the_executable_resolve_in_the_target() {
    let dir = Dir::new();
    dir.write("pick.c", LIBRARY);
    dir.write("app.c", APP);
    dir.write("fix.c", FIX);
    dir.gcc(&["-shared", "-fPIC", "-O1", "-o", "libpick.so", "pick.c"]);
    dir.gcc(&["-O1", "-o", "app", "app.c", "-L.", "-lpick", "-Wl,-rpath,$ORIGIN"]);
    dir.gcc(&["-c", "-fPIC", "-O2", "fix.c"]);
    let pkg = Publisher::new().package(&dir.path("app"), &dir.path("fix.o"), &["check=check_v2"], 1);
    let proc = Proc::spawn(&dir.path("app"), &[]);
    proc.expect_line("42", 100);
    let before = snapshot(proc.pid());
    hotpatch_engine::apply(proc.pid(), &pkg, &ApplyOptions::default()).expect("apply");
    // pick(1) + twice(1): both went to the implementation their resolvers chose.
    proc.expect_line("1003", 200);
    hotpatch_engine::rollback(proc.pid(), None, &ApplyOptions::default()).expect("rollback");
    proc.expect_line("42", 200);
    // Running the resolvers changed nothing else of the process's code.
    assert_eq!(snapshot(proc.pid()).1, before.1);
}
