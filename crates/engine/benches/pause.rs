//! Pause benchmark: the stop of a real apply, side by side in one run with the
//! floor (seize, interrupt, wait and resume of the same threads, nothing else);
//! then the cost of `--scan-memory` per MiB of writable memory.
//! Run as root: `cargo bench -p hotpatch-engine --bench pause`.
//!
//! Every rollback retires a region (it stays mapped), so the fixture is
//! restarted before the per-target cap of retired regions is reached.

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
    /* argv[2]: MiB of heap to allocate and touch, for the memory scan. */
    size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 0;
    if (mib) { char *heap = malloc(mib << 20); for (size_t i = 0; i < mib << 20; i += 4096) heap[i] = 1; }
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
    let opts = hotpatch_engine::ApplyOptions { timeout: Duration::from_secs(10), ..Default::default() };
    pause_table(d, &pkg, &opts);
    scan_table(d, &pkg);
}

/// The fixture with `threads` threads and `heap_mib` MiB of touched heap.
struct Fixture(std::process::Child);

impl Fixture {
    fn spawn(dir: &std::path::Path, threads: usize, heap_mib: usize) -> Fixture {
        let child = Command::new(dir.join("bench"))
            .args([threads.to_string(), heap_mib.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        Fixture(child)
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rounds per fixture process: each rollback retires one region.
const ROUNDS_PER_PROCESS: usize = hotpatch_engine::MAX_RETIRED_REGIONS - 1;

fn pause_table(d: &std::path::Path, pkg: &hotpatch_format::VerifiedPackage, opts: &hotpatch_engine::ApplyOptions) {
    let rounds = 40;
    println!(
        "{:>7} {:>12} {:>14} {:>16} {:>7} {:>8}",
        "threads", "floor p50 µs", "apply p50 µs", "rollback p50 µs", "ratio", "retries"
    );
    for n in [1, 8, 64] {
        let mut fixture = Fixture::spawn(d, n, 0);
        let (mut floor, mut apply, mut back, mut retries) = (Vec::new(), Vec::new(), Vec::new(), 0);
        // Interleaved, so machine noise falls on all three alike.
        for round in 0..rounds {
            if round > 0 && round % ROUNDS_PER_PROCESS == 0 {
                fixture = Fixture::spawn(d, n, 0);
            }
            let pid = fixture.pid();
            let (pause, threads) = hotpatch_engine::stop_resume_floor(pid).unwrap();
            assert_eq!(threads, n);
            floor.push(pause.as_micros() as u64);
            let a = hotpatch_engine::apply(pid, pkg, opts).unwrap();
            apply.push(a.pause_us);
            retries += a.retries;
            let r = hotpatch_engine::rollback(pid, None, opts).unwrap();
            back.push(r.pause_us);
            retries += r.retries;
        }
        let (f, a, b) = (median(&mut floor), median(&mut apply), median(&mut back));
        println!("{n:>7} {f:>12} {a:>14} {b:>16} {:>7.2} {retries:>8}", a as f64 / f.max(1) as f64);
    }
}

/// `--scan-memory`: the pause of an apply with and without it, one thread,
/// growing touched heaps; the scan's own time per MiB it read.
fn scan_table(d: &std::path::Path, pkg: &hotpatch_format::VerifiedPackage) {
    let rounds = 10;
    let plain = hotpatch_engine::ApplyOptions { timeout: Duration::from_secs(10), scan_memory: false };
    let scanning = hotpatch_engine::ApplyOptions { scan_memory: true, ..plain.clone() };
    println!();
    println!(
        "{:>8} {:>11} {:>14} {:>18} {:>12} {:>10}",
        "heap MiB", "scanned MiB", "apply p50 µs", "apply+scan p50 µs", "scan p50 µs", "µs / MiB"
    );
    for heap in [0, 64, 256] {
        let fixture = Fixture::spawn(d, 1, heap);
        let pid = fixture.pid();
        let (mut without, mut with, mut scan, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for _ in 0..rounds / 2 {
            // Two applies and two rollbacks per round: 2 retired regions.
            without.push(hotpatch_engine::apply(pid, pkg, &plain).unwrap().pause_us);
            hotpatch_engine::rollback(pid, None, &plain).unwrap();
            let a = hotpatch_engine::apply(pid, pkg, &scanning).unwrap();
            let s = a.memory_scan.unwrap();
            with.push(a.pause_us);
            scan.push(s.micros);
            bytes = s.bytes;
            hotpatch_engine::rollback(pid, None, &plain).unwrap();
        }
        let mib = bytes as f64 / (1 << 20) as f64;
        let s = median(&mut scan);
        println!(
            "{heap:>8} {mib:>11.1} {:>14} {:>18} {s:>12} {:>10.0}",
            median(&mut without),
            median(&mut with),
            s as f64 / mib.max(1.0 / 1024.0)
        );
    }
}
