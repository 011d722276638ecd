//! The machine key pair in text form: `hotpatch-machine-key-v1 <hex>` for the
//! secret (kept 0600 by the agent), plain hex for the public half on the wire.

use ed25519_dalek::{Signer, Verifier};

use crate::request::{RequestSignature, WireError, signed_message};

const SECRET_TAG: &str = "hotpatch-machine-key-v1";

/// A machine's secret signing key.
pub struct MachineKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for MachineKey {
    // Never print key material, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MachineKey(public {})", self.public().to_hex())
    }
}

impl MachineKey {
    pub fn generate() -> Result<MachineKey, WireError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| WireError::Random(e.to_string()))?;
        Ok(MachineKey::from_seed(seed))
    }

    pub fn from_seed(seed: [u8; 32]) -> MachineKey {
        MachineKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> MachinePublicKey {
        MachinePublicKey(self.0.verifying_key())
    }

    pub fn to_text(&self) -> String {
        format!("{SECRET_TAG} {}", hex::encode(self.0.to_bytes()))
    }

    pub fn parse(text: &str) -> Result<MachineKey, WireError> {
        let value = text
            .trim()
            .strip_prefix(SECRET_TAG)
            .ok_or_else(|| WireError::BadKey(format!("expected text starting with {SECRET_TAG:?}")))?;
        Ok(MachineKey::from_seed(decode_32(value.trim(), "machine key")?))
    }

    /// Signs one request. `path` is the path and query exactly as sent.
    pub fn sign(&self, method: &str, path: &str, machine_id: &str, sequence: u64, body: &[u8]) -> RequestSignature {
        let message = signed_message(method, path, machine_id, sequence, body);
        RequestSignature {
            machine_id: machine_id.to_string(),
            sequence,
            signature: hex::encode(self.0.sign(&message).to_bytes()),
        }
    }
}

/// The public half, which the server stores at enrollment.
#[derive(Clone, PartialEq, Eq)]
pub struct MachinePublicKey(ed25519_dalek::VerifyingKey);

impl std::fmt::Debug for MachinePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MachinePublicKey({})", self.to_hex())
    }
}

impl MachinePublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn from_hex(text: &str) -> Result<MachinePublicKey, WireError> {
        let bytes = decode_32(text, "machine public key")?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| WireError::BadKey("machine public key is not a valid ed25519 point".into()))?;
        // A weak (small-order) key would let anyone forge signatures for it.
        if key.is_weak() {
            return Err(WireError::BadKey("machine public key is a weak (small-order) point".into()));
        }
        Ok(MachinePublicKey(key))
    }

    /// Checks the signature of one request; the caller checks the sequence
    /// against the last one it accepted.
    pub fn verify(&self, method: &str, path: &str, sig: &RequestSignature, body: &[u8]) -> Result<(), WireError> {
        let bytes: [u8; 64] = hex::decode(&sig.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| WireError::BadHeader("signature must be 128 hex digits".into()))?;
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        let message = signed_message(method, path, &sig.machine_id, sig.sequence, body);
        // verify_strict refuses the malleable forms plain verify lets through.
        if self.0.verify_strict(&message, &signature).is_ok() && self.0.verify(&message, &signature).is_ok() {
            Ok(())
        } else {
            Err(WireError::BadSignature)
        }
    }
}

fn decode_32(text: &str, what: &str) -> Result<[u8; 32], WireError> {
    let bytes = hex::decode(text).map_err(|_| WireError::BadKey(format!("{what} is not hex")))?;
    bytes.try_into().map_err(|v: Vec<u8>| WireError::BadKey(format!("{what} is {} bytes, expected 32", v.len())))
}
