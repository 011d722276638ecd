//! Every kind of bad input to the package format is refused with the specific
//! error that names the problem, never a panic. The packages are real: gcc
//! compiles a baseline and a replacement object in a temporary directory.

mod common;

use common::Fixture;
use hotpatch_format::{
    FormatError, HEADER_LEN, KEY_ID_LEN, KeyError, MAX_MANIFEST_LEN, MAX_PAYLOAD_LEN, Package, PublicKey,
    SIGNATURE_BLOCK_LEN, SecretKey, TrustStore, check_payload, verify,
};
use std::sync::LazyLock;

static FIXTURE: LazyLock<Fixture> = LazyLock::new(Fixture::new);

/// One signed package built from the fixture, with the key that signed it.
struct Signed {
    bytes: Vec<u8>,
    key: SecretKey,
}

impl Signed {
    fn new() -> Signed {
        let key = SecretKey::generate().expect("random key");
        let bytes = Package::build(FIXTURE.manifest(), &FIXTURE.fix_o, &key).expect("valid package builds");
        Signed { bytes, key }
    }

    fn trust(&self) -> TrustStore {
        TrustStore::from_keys([self.key.public()])
    }

    fn manifest_len(&self) -> usize {
        u32::from_le_bytes(self.bytes[12..16].try_into().unwrap()) as usize
    }

    fn payload_len(&self) -> usize {
        u32::from_le_bytes(self.bytes[16..20].try_into().unwrap()) as usize
    }

    fn manifest_bytes(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..HEADER_LEN + self.manifest_len()]
    }

    fn payload_start(&self) -> usize {
        HEADER_LEN + self.manifest_len()
    }

    fn block_start(&self) -> usize {
        self.payload_start() + self.payload_len()
    }

    /// The same package with the manifest bytes replaced (header lengths
    /// updated, payload and signature block kept).
    fn with_manifest(&self, manifest: &[u8]) -> Vec<u8> {
        let mut out = self.bytes[..12].to_vec();
        out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.bytes[16..HEADER_LEN]);
        out.extend_from_slice(manifest);
        out.extend_from_slice(&self.bytes[self.payload_start()..]);
        out
    }
}

fn parse_err(bytes: &[u8]) -> FormatError {
    match Package::parse(bytes) {
        Ok(p) => panic!("malformed package accepted: {:?}", p.manifest.patch_id),
        Err(e) => e,
    }
}

fn verify_err(bytes: &[u8], trust: &TrustStore) -> FormatError {
    match verify(bytes, trust) {
        Ok(p) => panic!("bad package verified: {:?}", p.manifest.patch_id),
        Err(e) => e,
    }
}

fn assert_mentions(err: &impl std::fmt::Display, needles: &[&str]) {
    let msg = err.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "message {msg:?} does not mention {needle:?}");
    }
}

#[test]
fn the_fixture_package_is_valid() {
    let signed = Signed::new();
    let package = Package::parse(&signed.bytes).expect("parses");
    assert_eq!(package.payload, FIXTURE.fix_o);
    assert_eq!(package.key_id_hex(), signed.key.public().id_hex());
    let verified = verify(&signed.bytes, &signed.trust()).expect("verifies");
    assert_eq!(verified.key_id, signed.key.public().id_hex());
    assert_eq!(verified.manifest.functions[0].symbol, "check");
    assert_eq!(signed.bytes.len(), signed.block_start() + SIGNATURE_BLOCK_LEN);
}

#[test]
fn every_truncation_is_refused_as_truncated() {
    let signed = Signed::new();
    for len in 0..signed.bytes.len() {
        let prefix = &signed.bytes[..len];
        let result = std::panic::catch_unwind(|| Package::parse(prefix));
        let err = match result {
            Err(_) => panic!("parse panicked on a {len}-byte prefix"),
            Ok(Ok(_)) => panic!("{len}-byte prefix accepted"),
            Ok(Err(e)) => e,
        };
        let expected_what = if len < HEADER_LEN {
            "header"
        } else if len < signed.payload_start() {
            "manifest"
        } else if len < signed.block_start() {
            "payload"
        } else {
            "signature block"
        };
        match &err {
            FormatError::Truncated { what, needed, available } => {
                assert_eq!(*what, expected_what, "prefix {len}");
                assert_eq!(*available, len as u64);
                assert!(*needed > len as u64, "prefix {len}: needed {needed}");
            }
            other => panic!("prefix {len}: expected Truncated, got {other:?}"),
        }
        assert_mentions(&err, &["truncated", expected_what, &format!("only {len} present")]);
        // verify goes through the same parser.
        assert!(matches!(verify(prefix, &signed.trust()), Err(FormatError::Truncated { .. })));
    }
}

#[test]
fn oversized_manifest_length_is_refused() {
    let signed = Signed::new();
    for len in [MAX_MANIFEST_LEN as u32 + 1, u32::MAX] {
        let mut bytes = signed.bytes.clone();
        bytes[12..16].copy_from_slice(&len.to_le_bytes());
        let err = parse_err(&bytes);
        match &err {
            FormatError::TooLarge { what: "manifest", len: l, limit } => {
                assert_eq!(*l, u64::from(len));
                assert_eq!(*limit, MAX_MANIFEST_LEN as u64);
            }
            other => panic!("expected TooLarge manifest, got {other:?}"),
        }
        assert_mentions(&err, &["manifest", &len.to_string(), "larger than the limit"]);
    }
}

#[test]
fn oversized_payload_length_is_refused() {
    let signed = Signed::new();
    for len in [MAX_PAYLOAD_LEN as u32 + 1, u32::MAX] {
        let mut bytes = signed.bytes.clone();
        bytes[16..20].copy_from_slice(&len.to_le_bytes());
        let err = parse_err(&bytes);
        match &err {
            FormatError::TooLarge { what: "payload", len: l, limit } => {
                assert_eq!(*l, u64::from(len));
                assert_eq!(*limit, MAX_PAYLOAD_LEN as u64);
            }
            other => panic!("expected TooLarge payload, got {other:?}"),
        }
        assert_mentions(&err, &["payload", &len.to_string(), "larger than the limit"]);
    }
}

#[test]
fn length_fields_within_limits_but_beyond_the_file_are_truncation() {
    let signed = Signed::new();
    let mut bytes = signed.bytes.clone();
    bytes[16..20].copy_from_slice(&(MAX_PAYLOAD_LEN as u32).to_le_bytes());
    let err = parse_err(&bytes);
    assert!(matches!(err, FormatError::Truncated { what: "payload", .. }), "{err:?}");
    assert_mentions(&err, &["truncated", "payload"]);

    let mut bytes = signed.bytes.clone();
    bytes[12..16].copy_from_slice(&(MAX_MANIFEST_LEN as u32).to_le_bytes());
    let err = parse_err(&bytes);
    assert!(matches!(err, FormatError::Truncated { what: "manifest", .. }), "{err:?}");
}

#[test]
fn wrong_magic_is_refused() {
    let signed = Signed::new();
    for at in 0..8 {
        let mut bytes = signed.bytes.clone();
        bytes[at] ^= 0x20;
        let err = parse_err(&bytes);
        assert!(matches!(err, FormatError::BadMagic), "byte {at}: {err:?}");
        assert_mentions(&err, &["wrong magic", "HOTPATCH"]);
    }
    // An ELF file handed over as a package.
    let err = parse_err(&FIXTURE.fix_o);
    assert!(matches!(err, FormatError::BadMagic), "{err:?}");
}

#[test]
fn wrong_version_is_refused() {
    let signed = Signed::new();
    for version in [0u16, 2, 0x100, u16::MAX] {
        let mut bytes = signed.bytes.clone();
        bytes[8..10].copy_from_slice(&version.to_le_bytes());
        let err = parse_err(&bytes);
        match &err {
            FormatError::UnsupportedVersion { found, supported } => {
                assert_eq!(*found, version);
                assert_eq!(*supported, 1);
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
        assert_mentions(&err, &["unsupported package format version", &format!("version {version} ")]);
    }
}

#[test]
fn non_zero_reserved_field_is_refused() {
    let signed = Signed::new();
    for reserved in [1u16, 0x8000] {
        let mut bytes = signed.bytes.clone();
        bytes[10..12].copy_from_slice(&reserved.to_le_bytes());
        let err = parse_err(&bytes);
        assert!(matches!(err, FormatError::ReservedNotZero(r) if r == reserved), "{err:?}");
        assert_mentions(&err, &["reserved", &format!("{reserved:#x}"), "must be 0"]);
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let signed = Signed::new();
    for extra in [1usize, 3, 4096] {
        let mut bytes = signed.bytes.clone();
        bytes.extend(std::iter::repeat_n(0u8, extra));
        let err = parse_err(&bytes);
        assert!(matches!(err, FormatError::TrailingBytes(n) if n == extra as u64), "{err:?}");
        assert_mentions(&err, &[&format!("{extra} unexpected bytes"), "after the signature block"]);
    }
}

#[test]
fn altered_payload_is_a_payload_hash_mismatch() {
    let signed = Signed::new();
    let expected = hotpatch_format::sha256_hex(&FIXTURE.fix_o);
    for at in [signed.payload_start(), signed.payload_start() + 100, signed.block_start() - 1] {
        let mut bytes = signed.bytes.clone();
        bytes[at] ^= 0x01;
        let actual = hotpatch_format::sha256_hex(&bytes[signed.payload_start()..signed.block_start()]);
        for err in [parse_err(&bytes), verify_err(&bytes, &signed.trust())] {
            match &err {
                FormatError::PayloadHashMismatch { expected: e, actual: a } => {
                    assert_eq!(e, &expected);
                    assert_eq!(a, &actual);
                }
                other => panic!("byte {at}: expected PayloadHashMismatch, got {other:?}"),
            }
            assert_mentions(&err, &["payload hash mismatch", &expected, &actual]);
        }
    }
}

#[test]
fn altered_signature_is_a_bad_signature() {
    let signed = Signed::new();
    let id = signed.key.public().id_hex();
    for at in [signed.block_start() + KEY_ID_LEN, signed.bytes.len() - 1, signed.block_start() + KEY_ID_LEN + 31] {
        let mut bytes = signed.bytes.clone();
        bytes[at] ^= 0x80;
        // The structure is still fine: only verification notices.
        Package::parse(&bytes).expect("signature bytes are not checked by parse");
        let err = verify_err(&bytes, &signed.trust());
        assert!(matches!(&err, FormatError::BadSignature(k) if *k == id), "byte {at}: {err:?}");
        assert_mentions(&err, &["bad signature", &id]);
    }
}

#[test]
fn altered_manifest_with_consistent_hash_is_a_bad_signature() {
    // Change a signed byte that no structural check covers: the description.
    let signed = Signed::new();
    let text = String::from_utf8(signed.manifest_bytes().to_vec()).unwrap();
    let altered = text.replace("bounds check in check()", "bounds check in check!!");
    assert_ne!(text, altered);
    assert_eq!(text.len(), altered.len());
    let mut bytes = signed.bytes.clone();
    bytes[HEADER_LEN..signed.payload_start()].copy_from_slice(altered.as_bytes());
    let package = Package::parse(&bytes).expect("still well-formed");
    assert_eq!(package.manifest.description, "bounds check in check!!");
    let err = verify_err(&bytes, &signed.trust());
    assert!(matches!(err, FormatError::BadSignature(_)), "{err:?}");
    assert_mentions(&err, &["bad signature", &signed.key.public().id_hex()]);

    // A header byte that the parser reads but does not limit: the level in the
    // manifest is signed too.
    let altered = text.replace("\"level\": 1,", "\"level\": 7,");
    assert_ne!(text, altered);
    let err = verify_err(&signed.with_manifest(altered.as_bytes()), &signed.trust());
    assert!(matches!(err, FormatError::BadSignature(_)), "{err:?}");
}

#[test]
fn signature_by_another_key_is_a_bad_signature() {
    // Manifest and key id claim key A, signature made by key B.
    let a = Signed::new();
    let b = SecretKey::generate().unwrap();
    let by_b = Package::build(FIXTURE.manifest(), &FIXTURE.fix_o, &b).unwrap();
    let mut bytes = a.bytes.clone();
    let sig_at = a.block_start() + KEY_ID_LEN;
    bytes[sig_at..].copy_from_slice(&by_b[by_b.len() - 64..]);
    let err = verify_err(&bytes, &a.trust());
    assert!(matches!(err, FormatError::BadSignature(_)), "{err:?}");
}

#[test]
fn altered_key_id_in_signature_block_is_a_key_id_mismatch() {
    let signed = Signed::new();
    let mut bytes = signed.bytes.clone();
    bytes[signed.block_start()] ^= 0xff;
    let err = parse_err(&bytes);
    match &err {
        FormatError::KeyIdMismatch { block, manifest } => {
            assert_eq!(manifest, &signed.key.public().id_hex());
            assert_ne!(block, manifest);
        }
        other => panic!("expected KeyIdMismatch, got {other:?}"),
    }
    assert_mentions(&err, &["signature block names key", &signed.key.public().id_hex()]);
}

#[test]
fn unknown_key_is_refused() {
    let signed = Signed::new();
    let other = SecretKey::generate().unwrap();
    let id = signed.key.public().id_hex();
    for trust in [TrustStore::from_keys([other.public()]), TrustStore::default()] {
        let err = verify_err(&signed.bytes, &trust);
        assert!(matches!(&err, FormatError::UnknownKey(k) if *k == id), "{err:?}");
        assert_mentions(&err, &[&id, "not trusted"]);
    }
    // Trusting both is fine.
    let both = TrustStore::from_keys([other.public(), signed.key.public()]);
    verify(&signed.bytes, &both).expect("the signing key is among the trusted ones");
}

#[test]
fn executable_payload_is_not_a_relocatable_object() {
    let key = SecretKey::generate().unwrap();
    let bytes = Package::build(FIXTURE.manifest(), &FIXTURE.base, &key).unwrap();
    Package::parse(&bytes).expect("parse does not look inside the payload");
    let err = verify_err(&bytes, &TrustStore::from_keys([key.public()]));
    assert!(matches!(err, FormatError::Payload(_)), "{err:?}");
    assert_mentions(&err, &["payload", "relocatable object", "ET_REL", "executable"]);
}

#[test]
fn non_elf_payload_is_refused() {
    let key = SecretKey::generate().unwrap();
    let trust = TrustStore::from_keys([key.public()]);
    for payload in [&b""[..], b"\x7fEL", b"int check_v2(int x) { return x; }\n"] {
        let bytes = Package::build(FIXTURE.manifest(), payload, &key).unwrap();
        let err = verify_err(&bytes, &trust);
        assert!(matches!(err, FormatError::Payload(_)), "{err:?}");
        assert_mentions(&err, &["not an ELF file"]);
    }
    // ELF magic, then garbage: a header too short to be 64-bit ELF.
    let bytes = Package::build(FIXTURE.manifest(), b"\x7fELF\x02\x01\x01", &key).unwrap();
    let err = verify_err(&bytes, &trust);
    assert!(matches!(err, FormatError::Payload(_)), "{err:?}");
    assert_mentions(&err, &["not a 64-bit ELF object"]);
}

#[test]
fn payload_for_the_wrong_machine_is_refused() {
    let mut object = FIXTURE.fix_o.clone();
    assert_eq!(u16::from_le_bytes([object[18], object[19]]), 62, "gcc built an x86_64 object");
    object[18..20].copy_from_slice(&183u16.to_le_bytes());
    let key = SecretKey::generate().unwrap();
    let bytes = Package::build(FIXTURE.manifest(), &object, &key).unwrap();
    let err = verify_err(&bytes, &TrustStore::from_keys([key.public()]));
    assert!(matches!(err, FormatError::Payload(_)), "{err:?}");
    assert_mentions(&err, &["aarch64", "x86_64"]);

    // An unknown machine is named by number.
    object[18..20].copy_from_slice(&0x1234u16.to_le_bytes());
    let err = check_payload(&object, hotpatch_format::Machine::X86_64).unwrap_err();
    assert!(matches!(err, FormatError::Payload(_)), "{err:?}");
    assert_mentions(&err, &["e_machine 4660", "x86_64"]);
}

#[test]
fn manifest_that_is_not_json_is_refused() {
    let signed = Signed::new();
    for manifest in [&b""[..], b"{", b"not json", b"\xff\xfe{}", b"[]", b"null"] {
        let err = parse_err(&signed.with_manifest(manifest));
        assert!(matches!(err, FormatError::Manifest(_)), "{manifest:?}: {err:?}");
        assert_mentions(&err, &["manifest is not valid", "not valid JSON"]);
    }
}

#[test]
fn manifest_with_unknown_field_is_refused() {
    let signed = Signed::new();
    let mut value: serde_json::Value = serde_json::from_slice(signed.manifest_bytes()).unwrap();
    value["surprise"] = serde_json::json!(true);
    let err = parse_err(&signed.with_manifest(&serde_json::to_vec(&value).unwrap()));
    assert!(matches!(err, FormatError::Manifest(_)), "{err:?}");
    assert_mentions(&err, &["unknown field", "surprise"]);

    // Nested structures refuse unknown fields too.
    let mut value: serde_json::Value = serde_json::from_slice(signed.manifest_bytes()).unwrap();
    value["target"]["arch"] = serde_json::json!("x86_64");
    let err = parse_err(&signed.with_manifest(&serde_json::to_vec(&value).unwrap()));
    assert_mentions(&err, &["unknown field", "arch"]);

    let mut value: serde_json::Value = serde_json::from_slice(signed.manifest_bytes()).unwrap();
    value["functions"][0]["offset"] = serde_json::json!(0);
    let err = parse_err(&signed.with_manifest(&serde_json::to_vec(&value).unwrap()));
    assert_mentions(&err, &["unknown field", "offset"]);

    // The unchanged manifest re-encoded compactly is still accepted: the
    // failures above are about the field, not about re-encoding.
    let value: serde_json::Value = serde_json::from_slice(signed.manifest_bytes()).unwrap();
    Package::parse(&signed.with_manifest(&serde_json::to_vec(&value).unwrap())).expect("re-encoded manifest parses");
}

#[test]
fn manifest_with_missing_field_is_refused() {
    let signed = Signed::new();
    let mut value: serde_json::Value = serde_json::from_slice(signed.manifest_bytes()).unwrap();
    value.as_object_mut().unwrap().remove("functions");
    let err = parse_err(&signed.with_manifest(&serde_json::to_vec(&value).unwrap()));
    assert!(matches!(err, FormatError::Manifest(_)), "{err:?}");
    assert_mentions(&err, &["missing field", "functions"]);
}

#[test]
fn function_too_small_for_a_jump_is_refused() {
    let key = SecretKey::generate().unwrap();
    let mut manifest = FIXTURE.manifest();
    manifest.functions[0].size = 3;
    let err = Package::build(manifest, &FIXTURE.fix_o, &key).unwrap_err();
    assert!(matches!(err, FormatError::Manifest(_)), "{err:?}");
    assert_mentions(&err, &["function check is 3 bytes", "too small", "5-byte jump"]);

    // The same manifest arriving inside a package is refused by parse.
    let signed = Signed::new();
    let mut value: serde_json::Value = serde_json::from_slice(signed.manifest_bytes()).unwrap();
    value["functions"][0]["size"] = serde_json::json!(3);
    let err = parse_err(&signed.with_manifest(&serde_json::to_vec(&value).unwrap()));
    assert!(matches!(err, FormatError::Manifest(_)), "{err:?}");
    assert_mentions(&err, &["function check is 3 bytes", "too small"]);

    // Exactly 5 bytes is enough.
    let mut manifest = FIXTURE.manifest();
    manifest.functions[0].size = 5;
    Package::build(manifest, &FIXTURE.fix_o, &key).expect("a 5-byte function takes a jump");
}

#[test]
fn other_invalid_manifest_fields_are_named() {
    let key = SecretKey::generate().unwrap();
    type Change = Box<dyn Fn(&mut hotpatch_format::Manifest)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|m| m.patch_id = "-starts-with-dash".into()), "patch_id"),
        (Box::new(|m| m.patch_id = "has/slash".into()), "patch_id"),
        (Box::new(|m| m.level = 0), "level must be at least 1"),
        (Box::new(|m| m.cves = vec!["CVE-24-1".into()]), "is not a CVE id"),
        (Box::new(|m| m.target.build_id = "ABCD".into()), "target.build_id"),
        (Box::new(|m| m.target.file_name = "usr/bin/base".into()), "not a path"),
        (Box::new(|m| m.created = "yesterday".into()), "RFC 3339"),
        (Box::new(|m| m.functions.clear()), "functions is empty"),
        (Box::new(|m| m.description = "bell\u{7}".into()), "control characters"),
        (Box::new(|m| m.format_version = 2), "format_version is 2"),
        (
            Box::new(|m| {
                let f = m.functions[0].clone();
                m.functions.push(f);
            }),
            "listed twice",
        ),
    ];
    for (change, needle) in cases {
        let mut manifest = FIXTURE.manifest();
        change(&mut manifest);
        let err = Package::build(manifest, &FIXTURE.fix_o, &key).unwrap_err();
        assert!(matches!(err, FormatError::Manifest(_)), "{needle}: {err:?}");
        assert_mentions(&err, &[needle]);
    }
}

#[test]
fn malformed_key_text_is_refused() {
    let key = SecretKey::generate().unwrap();
    let secret_text = key.to_text();
    let public_text = key.public().to_text();
    let hex64 = "ab".repeat(32);
    let cases = [
        ("".to_owned(), "expected a line starting with \"hotpatch-secret-key-v1\""),
        ("garbage".to_owned(), "found \"garbage\""),
        (public_text.clone(), "found \"hotpatch-public-key-v1\""),
        ("hotpatch-secret-key-v1".to_owned(), "key value missing"),
        ("hotpatch-secret-key-v1 zz".to_owned(), "not hex"),
        ("hotpatch-secret-key-v1 abcd".to_owned(), "2 bytes, expected 32"),
        (format!("hotpatch-secret-key-v1 {hex64}00"), "33 bytes, expected 32"),
        (format!("hotpatch-secret-key-v1 {hex64} extra"), "unexpected text after the key value"),
    ];
    for (text, needle) in &cases {
        let err = SecretKey::parse(text, "test.key").unwrap_err();
        assert!(matches!(&err, KeyError::Malformed { path, .. } if path == "test.key"), "{text:?}: {err:?}");
        assert_mentions(&err, &["test.key", needle]);
    }
    let err = PublicKey::parse(&secret_text, "test.pub").unwrap_err();
    assert!(matches!(err, KeyError::Malformed { .. }), "{err:?}");
    assert_mentions(&err, &["test.pub", "hotpatch-public-key-v1"]);

    // Well-formed text round-trips.
    assert_eq!(SecretKey::parse(&secret_text, "k").unwrap().public(), key.public());
    assert_eq!(PublicKey::parse(&public_text, "k").unwrap(), key.public());
}

#[test]
fn secret_key_is_saved_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("publisher.key");
    let key = SecretKey::generate().unwrap();
    key.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key file mode is {mode:o}");
    let loaded = SecretKey::load(&path).unwrap();
    assert_eq!(loaded.public(), key.public());
}

#[test]
fn saving_a_secret_key_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("publisher.key");
    let first = SecretKey::generate().unwrap();
    first.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let second = SecretKey::generate().unwrap();
    let err = second.save(&path).unwrap_err();
    assert!(matches!(&err, KeyError::Exists(p) if *p == path), "{err:?}");
    assert_mentions(&err, &["refusing to overwrite", "publisher.key"]);
    assert_eq!(std::fs::read(&path).unwrap(), before, "the existing key was changed");

    // Any existing file counts, not only key files.
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "keep me").unwrap();
    assert!(matches!(second.save(&other), Err(KeyError::Exists(_))));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me");

    // A trusted public key is never swapped silently either.
    let public = dir.path().join("publisher.pub");
    first.public().save(&public).unwrap();
    let err = second.public().save(&public).unwrap_err();
    assert!(matches!(&err, KeyError::Exists(p) if *p == public), "{err:?}");
    assert_eq!(PublicKey::load(&public).unwrap(), first.public());
}

#[test]
fn key_files_that_cannot_be_read_or_found_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.key");
    let err = SecretKey::load(&missing).unwrap_err();
    assert!(matches!(err, KeyError::Read { .. }), "{err:?}");
    assert_mentions(&err, &["missing.key"]);

    let err = TrustStore::load(dir.path()).unwrap_err();
    assert!(matches!(err, KeyError::NoKeys(_)), "{err:?}");
    assert_mentions(&err, &["no public keys"]);

    std::fs::write(dir.path().join("bad.pub"), "hotpatch-public-key-v1 1234\n").unwrap();
    let err = TrustStore::load(dir.path()).unwrap_err();
    assert!(matches!(err, KeyError::Malformed { .. }), "{err:?}");
    assert_mentions(&err, &["bad.pub", "2 bytes, expected 32"]);

    // A key error inside a format error keeps its message.
    let err: FormatError = KeyError::NoKeys(dir.path().into()).into();
    assert!(matches!(err, FormatError::Key(_)));
    assert_mentions(&err, &["no public keys"]);
}
