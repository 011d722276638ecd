//! Machine request headers from the network: reading them and checking a
//! signature never panics, and nothing but the key's own signature verifies.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (machine, sequence, signature, body) = (parts.next(), parts.next(), parts.next(), parts.next());
    let Ok(sig) = hotpatch_wire::RequestSignature::from_headers(machine, sequence, signature) else { return };
    let key = hotpatch_wire::MachineKey::from_seed([7; 32]);
    let body = body.unwrap_or("").as_bytes();
    let verdict = key.public().verify("POST", "/api/v1/agent/checkin", &sig, body);
    let genuine = key.sign("POST", "/api/v1/agent/checkin", &sig.machine_id, sig.sequence, body);
    if verdict.is_ok() {
        assert_eq!(sig.signature.to_ascii_lowercase(), genuine.signature, "only the key's signature verifies");
    }
});
