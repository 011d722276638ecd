//! Property tests: every valid package round-trips through build and parse, and
//! no mutation of a valid package makes the parser panic or lets a changed
//! package verify.

mod common;

use common::Fixture;
use hotpatch_format::{
    Classification, FORMAT_VERSION, FormatError, FunctionPatch, Machine, Manifest, Package, SecretKey, Target,
    TrustStore, sha256_hex, verify,
};
use proptest::prelude::*;
use std::sync::LazyLock;

static FIXTURE: LazyLock<Fixture> = LazyLock::new(Fixture::new);

fn text(max_chars: usize) -> impl Strategy<Value = String> {
    // Any printable text; tab and newline are the only control characters allowed.
    proptest::string::string_regex(&format!("(\\PC|\\t|\\n){{0,{max_chars}}}")).unwrap()
}

fn function() -> impl Strategy<Value = FunctionPatch> {
    (
        "[A-Za-z_][A-Za-z0-9_.]{0,40}",
        proptest::option::of("[a-z0-9_]{1,12}\\.c"),
        5u64..=(16 << 20),
        any::<[u8; 32]>(),
        "[A-Za-z_][A-Za-z0-9_.]{0,40}",
    )
        .prop_map(|(symbol, file, size, original, replacement)| FunctionPatch {
            symbol,
            file,
            size,
            original_sha256: hex::encode(original),
            replacement,
            address: None,
        })
}

prop_compose! {
    fn manifest()(
        patch_id in "[A-Za-z0-9_][A-Za-z0-9._-]{0,63}",
        product in "[^\\p{C}]{1,32}",
        build_id in proptest::collection::vec(any::<u8>(), 4..=64),
        file_name in "[^\\p{C}/]{1,60}",
        machine in prop_oneof![Just(Machine::X86_64), Just(Machine::Aarch64)],
        level in 1u32..,
        classification in proptest::sample::select(Classification::ALL.to_vec()),
        cves in proptest::collection::vec("CVE-[0-9]{4}-[0-9]{4,12}", 0..8),
        description in text(200),
        created in 0i64..4_000_000_000,
        functions in proptest::collection::btree_map("[a-z_][a-z0-9_]{0,20}", function(), 1..6),
    ) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            patch_id,
            product,
            target: Target { build_id: hex::encode(build_id), file_name, machine },
            level,
            classification,
            cves,
            description,
            created: jiff::Timestamp::from_second(created).unwrap().to_string(),
            // Distinct symbols, as validate requires.
            functions: functions
                .into_iter()
                .map(|(symbol, f)| FunctionPatch { symbol, ..f })
                .collect(),
            symbols: Vec::new(),
            // Filled in by Package::build.
            payload_sha256: String::new(),
            signing_key_id: String::new(),
        }
    }
}

/// A single-point change to a package.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: prop::sample::Index,
        mask: u8,
    },
    Set {
        at: prop::sample::Index,
        value: u8,
    },
    Truncate {
        to: prop::sample::Index,
    },
    Insert {
        at: prop::sample::Index,
        bytes: Vec<u8>,
    },
    Remove {
        at: prop::sample::Index,
        len: usize,
    },
    /// Overwrite four bytes with a little-endian u32 (hits the length fields).
    Word {
        at: usize,
        value: u32,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        any::<prop::sample::Index>().prop_map(|to| Mutation::Truncate { to }),
        (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<prop::sample::Index>(), 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        (0usize..=20, any::<u32>()).prop_map(|(at, value)| Mutation::Word { at, value }),
    ]
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match m {
        Mutation::Flip { at, mask } => out[at.index(bytes.len())] ^= mask,
        Mutation::Set { at, value } => out[at.index(bytes.len())] = *value,
        Mutation::Truncate { to } => out.truncate(to.index(bytes.len())),
        Mutation::Insert { at, bytes: extra } => {
            let at = at.index(bytes.len() + 1);
            out.splice(at..at, extra.iter().copied());
        }
        Mutation::Remove { at, len } => {
            let at = at.index(bytes.len());
            out.drain(at..(at + len).min(bytes.len()));
        }
        Mutation::Word { at, value } => {
            // Only the first 24 bytes: the header and the start of the manifest.
            let at = (*at).min(bytes.len() - 4);
            out[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_packages_round_trip(
        manifest in manifest(),
        payload in proptest::collection::vec(any::<u8>(), 0..4096),
        seed in any::<[u8; 32]>(),
    ) {
        let key = SecretKey::from_seed(seed);
        let filled = Manifest { payload_sha256: "0".repeat(64), signing_key_id: "0".repeat(16), ..manifest.clone() };
        filled.validate().expect("generated manifests are valid");

        let bytes = Package::build(manifest.clone(), &payload, &key).expect("valid package builds");
        let package = Package::parse(&bytes).expect("built package parses");
        let expected = Manifest {
            payload_sha256: sha256_hex(&payload),
            signing_key_id: key.public().id_hex(),
            ..manifest
        };
        prop_assert_eq!(&package.manifest, &expected);
        prop_assert_eq!(&package.payload, &payload);
        prop_assert_eq!(package.key_id_hex(), key.public().id_hex());
        prop_assert_eq!(package.key_id, key.public().id());

        // The signature checks out: verification gets as far as the payload,
        // which is random bytes and so not an ELF object.
        let trust = TrustStore::from_keys([key.public()]);
        match verify(&bytes, &trust) {
            Err(FormatError::Payload(_)) => {}
            other => prop_assert!(false, "expected a payload error after a good signature, got {:?}", other.map(|v| v.key_id)),
        }

        // Building again gives the same bytes (ed25519 is deterministic).
        prop_assert_eq!(Package::build(expected.clone(), &payload, &key).unwrap(), bytes);
    }

    #[test]
    fn real_payloads_round_trip_and_verify(manifest in manifest(), seed in any::<[u8; 32]>()) {
        let manifest = Manifest { target: Target { machine: Machine::X86_64, ..manifest.target.clone() }, ..manifest };
        let key = SecretKey::from_seed(seed);
        let bytes = Package::build(manifest, &FIXTURE.fix_o, &key).unwrap();
        let verified = verify(&bytes, &TrustStore::from_keys([key.public()])).expect("verifies");
        prop_assert_eq!(&verified.payload, &FIXTURE.fix_o);
        prop_assert_eq!(verified.key_id, key.public().id_hex());
    }
}

static SIGNED: LazyLock<(Vec<u8>, TrustStore)> = LazyLock::new(|| {
    let key = SecretKey::from_seed([7; 32]);
    let bytes = Package::build(FIXTURE.manifest(), &FIXTURE.fix_o, &key).unwrap();
    verify(&bytes, &TrustStore::from_keys([key.public()])).expect("the unmutated package verifies");
    (bytes, TrustStore::from_keys([key.public()]))
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn mutated_packages_never_panic_and_never_verify(mutations in proptest::collection::vec(mutation(), 1..4)) {
        let (original, trust) = &*SIGNED;
        let mut bytes = original.clone();
        for m in &mutations {
            if bytes.len() < 24 {
                break;
            }
            bytes = apply(&bytes, m);
        }
        // A panic here fails the test with the mutation that caused it.
        let parsed = Package::parse(&bytes);
        let verified = verify(&bytes, trust);
        if bytes == *original {
            prop_assert!(verified.is_ok());
        } else {
            prop_assert!(verified.is_err(), "a changed package verified");
            // Parse may accept a change the signature covers (whitespace in the
            // manifest, the signature itself), but never one to the payload.
            if let Ok(p) = parsed {
                prop_assert_eq!(sha256_hex(&p.payload), p.manifest.payload_sha256);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Package::parse(&bytes);
        // With a valid header prefix the parser gets further in.
        let mut with_header = b"HOTPATCH\x01\x00\x00\x00".to_vec();
        with_header.extend_from_slice(&bytes);
        let _ = Package::parse(&with_header);
        let _ = verify(&with_header, &SIGNED.1);
    }
}
