//! Package::parse must never panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(package) = hotpatch_format::Package::parse(data) {
        // Whatever parses is internally consistent.
        assert_eq!(hotpatch_format::sha256_hex(&package.payload), package.manifest.payload_sha256);
        assert_eq!(package.key_id_hex(), package.manifest.signing_key_id);
    }
});
