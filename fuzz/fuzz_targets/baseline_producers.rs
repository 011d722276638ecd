//! The builder's -fipa-ra check reads DWARF from an untrusted baseline: any
//! bytes give an answer, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hotpatch_build::ipa_ra(data, None);
    let _ = hotpatch_build::ipa_ra(&[], Some(data));
});
