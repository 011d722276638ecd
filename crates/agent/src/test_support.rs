//! Hand-made manifests and packages for the unit tests of pure logic.

use hotpatch_format::{Classification, Machine, Manifest, Target, VerifiedPackage};

pub fn manifest(build_id: &str, level: u32, classification: Classification) -> Manifest {
    Manifest {
        format_version: 1,
        patch_id: format!("demo-l{level}"),
        product: "demo".into(),
        target: Target { build_id: build_id.into(), file_name: "demo".into(), machine: Machine::X86_64 },
        level,
        classification,
        cves: vec![format!("CVE-2026-{:04}", 1000 + level)],
        description: String::new(),
        created: "2026-12-01T00:00:00Z".into(),
        functions: Vec::new(),
        symbols: Vec::new(),
        payload_sha256: String::new(),
        signing_key_id: String::new(),
    }
}

pub fn package(build_id: &str, level: u32) -> VerifiedPackage {
    VerifiedPackage {
        manifest: manifest(build_id, level, Classification::Security),
        payload: Vec::new(),
        key_id: String::new(),
    }
}
