//! Pause benchmark: the stop of a real apply, side by side in one run with the
//! floor (seize, interrupt, wait and resume of the same threads, nothing else).
//! Run as root: `cargo bench -p hotpatch-engine --bench pause`.

use hotpatch_format::{Classification, Package, SecretKey, TrustStore};
use std::process::{Command, Stdio};
use std::time::Duration;

const FIXTURE: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
int counter = 41;
__attribute__((noinline)) int check(int x) { return x + counter; }
static void *worker(void *a) { for (;;) { volatile int v = check(0); (void)v; usleep(1000); } }
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    for (int i = 1; i < n; i++) { pthread_t t; pthread_create(&t, 0, worker, 0); }
    for (;;) { volatile int v = check(1); (void)v; usleep(1000); }
}
"#;

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("bench.c"), FIXTURE).unwrap();
    std::fs::write(d.join("fix.c"), "int check_v2(int x) { return x; }\n").unwrap();
    for args in [&["-O1", "-pthread", "-o", "bench", "bench.c"][..], &["-c", "-fPIC", "-O2", "fix.c"][..]] {
        assert!(Command::new("gcc").args(args).current_dir(d).status().unwrap().success());
    }
    let key = SecretKey::generate().unwrap();
    let base = std::fs::read(d.join("bench")).unwrap();
    let obj = std::fs::read(d.join("fix.o")).unwrap();
    let manifest = hotpatch_build::manifest_for(&hotpatch_build::PackRequest {
        baseline: &base,
        baseline_name: "bench".into(),
        debug_file: None,
        payload: &obj,
        replacements: vec![hotpatch_build::parse_replacement("check=check_v2").unwrap()],
        patch_id: Some("bench-l1".into()),
        product: "bench".into(),
        level: 1,
        classification: Classification::Security,
        cves: vec![],
        description: String::new(),
        created: "2026-11-29T00:00:00Z".into(),
        allow_ipa_ra: false,
    })
    .unwrap();
    let bytes = Package::build(manifest, &obj, &key).unwrap();
    let pkg = hotpatch_format::verify(&bytes, &TrustStore::from_keys([key.public()])).unwrap();
    let opts = hotpatch_engine::ApplyOptions { timeout: Duration::from_secs(10) };
    let rounds = 40;

    println!(
        "{:>7} {:>12} {:>14} {:>16} {:>7} {:>8}",
        "threads", "floor p50 µs", "apply p50 µs", "rollback p50 µs", "ratio", "retries"
    );
    for n in [1, 8, 64] {
        let mut child = Command::new(d.join("bench")).arg(n.to_string()).stdout(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let pid = child.id() as i32;
        let (mut floor, mut apply, mut back, mut retries) = (Vec::new(), Vec::new(), Vec::new(), 0);
        // Interleaved, so machine noise falls on all three alike.
        for _ in 0..rounds {
            let (pause, threads) = hotpatch_engine::stop_resume_floor(pid).unwrap();
            assert_eq!(threads, n);
            floor.push(pause.as_micros() as u64);
            let a = hotpatch_engine::apply(pid, &pkg, &opts).unwrap();
            apply.push(a.pause_us);
            retries += a.retries;
            let r = hotpatch_engine::rollback(pid, None, &opts).unwrap();
            back.push(r.pause_us);
            retries += r.retries;
        }
        let (f, a, b) = (median(&mut floor), median(&mut apply), median(&mut back));
        println!("{n:>7} {f:>12} {a:>14} {b:>16} {:>7.2} {retries:>8}", a as f64 / f.max(1) as f64);
        let _ = child.kill();
        let _ = child.wait();
    }
}
