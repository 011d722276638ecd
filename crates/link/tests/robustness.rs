//! Untrusted input never panics: real objects, truncated and bit-flipped.

mod common;

use common::{PAYLOAD, PIC, compile};
use hotpatch_link::{LinkPlan, MAX_REGION_SIZE};
use proptest::prelude::*;
use std::sync::OnceLock;

fn payload() -> &'static [u8] {
    static OBJ: OnceLock<Vec<u8>> = OnceLock::new();
    OBJ.get_or_init(|| {
        let mut flags = PIC.to_vec();
        flags.push("-fcommon");
        compile(PAYLOAD, &flags)
    })
}

/// Plans and links; any result is fine, a panic is not. Returns whether it linked.
fn attempt(bytes: &[u8]) -> bool {
    let Ok(plan) = LinkPlan::new(bytes, 4096) else {
        return false;
    };
    assert!(plan.region_size() <= MAX_REGION_SIZE);
    assert_eq!(plan.region_size() % 4096, 0);
    let _ = plan.undefined_symbols();
    let _ = plan.defined_functions();
    // Near and far answers for the names the payload really uses; names a
    // corruption made up are unknown.
    let mut resolve = |name: &str| match name {
        "strlen" | "hp_test_counter" => Some(0x7f00_1000_0000),
        "snprintf" => Some(0x1000_0000_0000),
        _ => None,
    };
    match plan.link(0x7f00_0000_0000, &mut resolve) {
        Ok(image) => {
            assert_eq!(image.bytes.len() as u64, plan.region_size());
            true
        }
        Err(_) => false,
    }
}

#[test]
fn the_unchanged_object_links() {
    assert!(attempt(payload()));
}

#[test]
fn every_single_byte_corruption() {
    let obj = payload();
    let mut linked = 0;
    let mut copy = obj.to_vec();
    for i in 0..obj.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            copy[i] ^= mask;
            if attempt(&copy) {
                linked += 1;
            }
            copy[i] ^= mask;
        }
    }
    // Most flips land in code or data bytes and still link; that is expected.
    assert!(linked > 0 && linked < 3 * obj.len(), "linked {linked} of {}", 3 * obj.len());
}

#[test]
fn every_truncation() {
    let obj = payload();
    for len in 0..obj.len() {
        assert!(!attempt(&obj[..len]), "truncated to {len} bytes and still linked");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_corruption_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = payload().to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        attempt(&bytes);
    }

    #[test]
    fn corrupting_headers_never_panics(
        // The ELF header, and the section header table at the end.
        flips in proptest::collection::vec((any::<bool>(), 0usize..64, any::<u8>()), 1..6),
    ) {
        let mut bytes = payload().to_vec();
        let shoff = u64::from_le_bytes(bytes[0x28..0x30].try_into().unwrap()) as usize;
        let table = bytes.len() - shoff;
        for (header, off, value) in flips {
            let i = if header { off } else { shoff + (off * 31) % table };
            bytes[i] = value;
        }
        attempt(&bytes);
    }
}
