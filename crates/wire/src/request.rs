//! The bytes a machine signs, and reading the signature back from headers.

use sha2::{Digest, Sha256};

/// Domain separation: a machine's request signature can never pass for a
/// signature over anything else.
const CONTEXT: &[u8] = b"hotpatch machine request v1\0";

/// Longest machine id accepted in a header; server ids are 32 hex digits.
const MAX_MACHINE_ID: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("bad machine key: {0}")]
    BadKey(String),
    #[error("bad signed-request header: {0}")]
    BadHeader(String),
    #[error("request signature does not verify with the machine's enrolled key")]
    BadSignature,
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// What one signed request carries in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSignature {
    pub machine_id: String,
    pub sequence: u64,
    pub signature: String,
}

impl RequestSignature {
    /// Reads the three header values (any may be missing); checks their shape only.
    pub fn from_headers(
        machine: Option<&str>,
        sequence: Option<&str>,
        signature: Option<&str>,
    ) -> Result<RequestSignature, WireError> {
        let missing = |h: &str| WireError::BadHeader(format!("header {h} is missing"));
        let machine_id = machine.ok_or_else(|| missing(crate::HEADER_MACHINE))?;
        let sequence = sequence.ok_or_else(|| missing(crate::HEADER_SEQUENCE))?;
        let signature = signature.ok_or_else(|| missing(crate::HEADER_SIGNATURE))?;
        if machine_id.is_empty()
            || machine_id.len() > MAX_MACHINE_ID
            || !machine_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(WireError::BadHeader(format!(
                "{} must be 1-{MAX_MACHINE_ID} letters, digits or '-'",
                crate::HEADER_MACHINE
            )));
        }
        // Stored as a signed 64-bit number by the server, so the top bit stays clear.
        let sequence = sequence.parse::<u64>().ok().filter(|&s| s > 0 && s <= i64::MAX as u64).ok_or_else(|| {
            WireError::BadHeader(format!("{} must be a number from 1 to 2^63-1", crate::HEADER_SEQUENCE))
        })?;
        Ok(RequestSignature { machine_id: machine_id.to_string(), sequence, signature: signature.to_string() })
    }
}

impl RequestSignature {
    /// The three headers that carry this signature, as (name, value).
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            (crate::HEADER_MACHINE, self.machine_id.clone()),
            (crate::HEADER_SEQUENCE, self.sequence.to_string()),
            (crate::HEADER_SIGNATURE, self.signature.clone()),
        ]
    }
}

/// The part of a request URL that is signed: the path and query as the server
/// receives them (`http://host:port/api/v1/x?y` gives `/api/v1/x?y`).
pub fn signed_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
}

/// The exact bytes signed: context, then method, path, machine id and sequence
/// each ended by a newline (none of them can hold one), then SHA-256 of the body.
pub fn signed_message(method: &str, path: &str, machine_id: &str, sequence: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + method.len() + path.len() + machine_id.len() + 64);
    m.extend_from_slice(CONTEXT);
    for part in [method, path, machine_id, &sequence.to_string()] {
        m.extend_from_slice(part.as_bytes());
        m.push(b'\n');
    }
    m.extend_from_slice(&Sha256::digest(body));
    m
}

/// The sequence number for the next request: above the last one used, and
/// otherwise the time in milliseconds, so a machine whose saved counter was
/// lost still moves past what the server has seen.
pub fn next_sequence(last: u64, now_millis: u64) -> u64 {
    last.saturating_add(1).max(now_millis).min(i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MachineKey, MachinePublicKey};
    use proptest::prelude::*;

    fn key() -> MachineKey {
        MachineKey::from_seed([3; 32])
    }

    #[test]
    fn signature_verifies_and_binds_every_field() {
        let k = key();
        let public = k.public();
        let sig = k.sign("POST", "/api/v1/agent/checkin", "m1", 5, b"{}");
        assert_eq!(public.verify("POST", "/api/v1/agent/checkin", &sig, b"{}"), Ok(()));
        assert_eq!(public.verify("GET", "/api/v1/agent/checkin", &sig, b"{}"), Err(WireError::BadSignature));
        assert_eq!(public.verify("POST", "/api/v1/agent/checkin?x", &sig, b"{}"), Err(WireError::BadSignature));
        assert_eq!(public.verify("POST", "/api/v1/agent/checkin", &sig, b"{ }"), Err(WireError::BadSignature));
        let other_seq = RequestSignature { sequence: 6, ..sig.clone() };
        assert_eq!(public.verify("POST", "/api/v1/agent/checkin", &other_seq, b"{}"), Err(WireError::BadSignature));
        let other_machine = RequestSignature { machine_id: "m2".into(), ..sig.clone() };
        assert_eq!(public.verify("POST", "/api/v1/agent/checkin", &other_machine, b"{}"), Err(WireError::BadSignature));
        let other_key = MachineKey::from_seed([4; 32]).public();
        assert_eq!(other_key.verify("POST", "/api/v1/agent/checkin", &sig, b"{}"), Err(WireError::BadSignature));
    }

    #[test]
    fn key_text_round_trips_and_bad_keys_are_named() {
        let k = key();
        let again = MachineKey::parse(&k.to_text()).expect("parse");
        assert_eq!(again.public(), k.public());
        assert_eq!(MachinePublicKey::from_hex(&k.public().to_hex()).expect("public"), k.public());
        assert!(matches!(MachineKey::parse("nope"), Err(WireError::BadKey(_))));
        assert!(matches!(MachinePublicKey::from_hex("zz"), Err(WireError::BadKey(m)) if m.contains("not hex")));
        assert!(matches!(MachinePublicKey::from_hex("abcd"), Err(WireError::BadKey(m)) if m.contains("2 bytes")));
        // The identity point is small-order: refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(
            matches!(MachinePublicKey::from_hex(&hex::encode(identity)), Err(WireError::BadKey(m)) if m.contains("weak"))
        );
        assert!(!format!("{k:?}").contains(&hex::encode([3u8; 32])), "debug output hides the secret");
    }

    #[test]
    fn headers_are_checked_for_shape() {
        let ok = RequestSignature::from_headers(Some("m1"), Some("7"), Some("ab")).expect("ok");
        assert_eq!(ok.sequence, 7);
        for (m, s, g, needle) in [
            (None, Some("1"), Some("a"), "x-hotpatch-machine is missing"),
            (Some("m"), None, Some("a"), "x-hotpatch-sequence is missing"),
            (Some("m"), Some("1"), None, "x-hotpatch-signature is missing"),
            (Some("m\n"), Some("1"), Some("a"), "letters, digits"),
            (Some("m"), Some("0"), Some("a"), "from 1"),
            (Some("m"), Some("-1"), Some("a"), "from 1"),
            (Some("m"), Some("9223372036854775808"), Some("a"), "from 1"),
        ] {
            let e = RequestSignature::from_headers(m, s, g).expect_err(needle);
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
        let sig = RequestSignature { machine_id: "m1".into(), sequence: 1, signature: "00".into() };
        assert!(matches!(key().public().verify("GET", "/", &sig, b""), Err(WireError::BadHeader(_))));
    }

    #[test]
    fn the_signed_path_is_path_and_query() {
        assert_eq!(signed_path("https://h:8443/api/v1/agent/checkin"), "/api/v1/agent/checkin");
        assert_eq!(signed_path("http://127.0.0.1:1/api/v1/artifacts/ab?x=1"), "/api/v1/artifacts/ab?x=1");
        assert_eq!(signed_path("http://host"), "/");
        let sig = RequestSignature { machine_id: "m".into(), sequence: 9, signature: "ab".into() };
        assert_eq!(sig.headers()[1], (crate::HEADER_SEQUENCE, "9".to_string()));
    }

    #[test]
    fn sequence_moves_forward_whatever_the_clock_says() {
        assert_eq!(next_sequence(0, 1000), 1000);
        assert_eq!(next_sequence(5000, 1000), 5001);
        assert_eq!(next_sequence(u64::MAX, 0), i64::MAX as u64);
    }

    proptest! {
        #[test]
        fn any_header_text_is_refused_or_accepted_without_panic(m in ".{0,80}", s in ".{0,30}", g in ".{0,200}") {
            if let Ok(sig) = RequestSignature::from_headers(Some(&m), Some(&s), Some(&g)) {
                let _ = key().public().verify("POST", "/p", &sig, b"");
            }
        }

        #[test]
        fn next_is_always_above_last(last in 0u64..(i64::MAX as u64), now in any::<u64>()) {
            prop_assert!(next_sequence(last, now) > last);
        }
    }
}
