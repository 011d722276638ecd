//! The shadow variable runtime (runtime/shadow.c) compiled into a small C
//! program with gcc and run: its lock neither waits for the thread that
//! holds it (a signal handler re-entering the API) nor for a thread that
//! fork() left behind in the parent.

use std::path::Path;
use std::process::Command;

#[test]
fn the_lock_survives_reentry_and_fork() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join("lock_harness");
    let built = Command::new("gcc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&exe)
        .arg(crate_dir.join("tests/runtime/lock_harness.c"))
        .arg("-I")
        .arg(crate_dir.join("runtime"))
        .arg("-I")
        .arg(crate_dir.join("../../include"))
        .output()
        .expect("run gcc");
    assert!(built.status.success(), "gcc: {}", String::from_utf8_lossy(&built.stderr));
    let run = Command::new(&exe).output().expect("run the harness");
    assert!(
        run.status.success() && run.stdout == b"ok\n",
        "the harness failed with {:?} (10: re-entry waited or allocated, 11-12: a gone holder was not \
         taken over, 13-14: the forked child did not get the table, 15: the parent's holder lost it)",
        run.status
    );
}
