//! Compiles the shadow variable runtime (runtime/shadow.c) into the
//! relocatable object the builder links into payloads that use it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = PathBuf::from("runtime/shadow.c");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed=../../include/hotpatch.h");
    println!("cargo:rerun-if-env-changed=HOTPATCH_RUNTIME_CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("shadow.o");
    let cc = std::env::var("HOTPATCH_RUNTIME_CC").unwrap_or_else(|_| "gcc".into());
    // Self-contained code: no stack protector or CET notes (they would need the
    // process's TLS canary and properties), no calls to memset/memcpy, no
    // unwind tables (the stack check treats the region as busy anyway).
    let status = Command::new(&cc)
        .args([
            "-std=gnu11",
            "-O2",
            "-fPIC",
            "-ffunction-sections",
            "-fdata-sections",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fno-tree-loop-distribute-patterns",
            "-fcf-protection=none",
            "-fno-builtin",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I../../include",
            "-c",
        ])
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} to compile {}: {e}", source.display()));
    assert!(status.success(), "{cc} failed to compile {}", source.display());
}
