//! A hotpatch for a shared library reaches every one of 20 processes that map
//! it, through the daemon, each process getting its own transition.

mod common;

use std::process::Command;

use common::*;

const LIB_C: &str = r#"
int base = 7;
__attribute__((used)) static const char fixture_tag[] = FIXTURE_TAG;
__attribute__((noinline)) int libcheck(int x) { return x * 10 + base; }
"#;

/// Prints libcheck(1) whenever it changes: 17 unpatched, 18 patched.
const APP_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
extern int libcheck(int x);
int main(int argc, char **argv) {
    (void)argv;
    int last = -1;
    for (;;) {
        int v = libcheck(argc);
        if (v != last) { printf("%d\n", v); fflush(stdout); last = v; }
        usleep(5000);
    }
}
"#;

const FIX_C: &str = "extern int base;\nint libcheck_v2(int x) { return x * 10 + base + 1; }\n";

#[test]
fn a_library_hotpatch_reaches_all_twenty_processes_that_map_it() {
    let f = Fixture::new();
    let d = f.dir.path();
    std::fs::write(f.path("lib.c"), LIB_C).expect("write");
    std::fs::write(f.path("app.c"), APP_C).expect("write");
    std::fs::write(f.path("libfix.c"), FIX_C).expect("write");
    gcc(d, &["-O1", "-fno-ipa-ra", "-fPIC", "-shared", &f.tag(), "-o", "libdemo.so", "lib.c"]);
    gcc(d, &["-O1", "-o", "app", "app.c", "-L.", "-ldemo", "-Wl,-rpath,$ORIGIN"]);
    gcc(d, &["-c", "-fPIC", "-O2", "libfix.c"]);
    let catalog = f.path("catalog");
    std::fs::create_dir(&catalog).expect("mkdir");
    let packed = run(&[
        "pack",
        "--baseline",
        &s(&f.path("libdemo.so")),
        "--payload",
        &s(&f.path("libfix.o")),
        "--replace",
        "libcheck=libcheck_v2",
        "--level",
        "1",
        "--classification",
        "security",
        "--key",
        &s(&f.path("keys/publisher.key")),
        "-o",
        &s(&catalog.join("libdemo-1.hpatch")),
    ]);
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));

    let procs: Vec<Svc> = (0..20).map(|_| Svc::start_command_first(Command::new(f.path("app")), "17")).collect();
    let cfg = f.path("agent.toml");
    let text = format!(
        "state_dir = {:?}\ntrust_dir = {:?}\ncatalog_dir = {:?}\nrescan_seconds = 0.2\n",
        s(&f.path("state")),
        f.trust(),
        s(&catalog)
    );
    write_config(&cfg, &text);
    let agent = Agent::start(&cfg, &f.path("agent.log"));
    for p in &procs {
        assert!(p.wait_for("18"), "process {} not patched; log:\n{}", p.pid(), agent.log_text());
    }
    let status = json(&run(&["--json", "status"]));
    let ours = status
        .as_array()
        .map(|a| a.iter().filter(|a| procs.iter().any(|p| a["pid"] == p.pid()) && a["active"] == true).count());
    assert_eq!(ours, Some(20), "{status}");
}
