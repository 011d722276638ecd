//! The agent check-in body as the server reads it: JSON into `CheckIn`
//! (unknown fields refused), then its validation. Never panics; what
//! validates stays within the documented bounds.

#![no_main]

use hotpatch_server::api::checkin::{CheckIn, MAX_CORES, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<CheckIn>(data) else { return };
    if validate(&body).is_ok() {
        let f = &body.facts;
        assert!(!f.hostname.is_empty() && f.hostname.len() <= 255);
        assert!(f.cores >= 1 && f.cores <= MAX_CORES);
        assert!(body.targets.len() <= 4096 && body.results.len() <= 1024);
        for r in &body.results {
            assert!(matches!(r.status.as_str(), "applied" | "rolled-back" | "failed"));
        }
        // What was accepted is written back as the same JSON the agent sent.
        let again: CheckIn = serde_json::from_str(&serde_json::to_string(&body).unwrap()).unwrap();
        assert!(validate(&again).is_ok());
    }
});
