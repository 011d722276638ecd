//! The container: header, manifest, payload, signature block (docs/FORMAT.md).

use crate::keys::{KEY_ID_LEN, SecretKey, TrustStore, key_id_hex};
use crate::manifest::Manifest;
use crate::{FormatError, sha256_hex};

pub const MAGIC: &[u8; 8] = b"HOTPATCH";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 20;
pub const SIGNATURE_BLOCK_LEN: usize = KEY_ID_LEN + 64;
pub const MAX_MANIFEST_LEN: usize = 1 << 20;
pub const MAX_PAYLOAD_LEN: usize = 64 << 20;

/// A structurally valid package: header, manifest and payload hash checked,
/// signature not yet checked. Use [`verify`] before trusting any of it.
#[derive(Debug, Clone)]
pub struct Package {
    pub manifest: Manifest,
    pub payload: Vec<u8>,
    pub key_id: [u8; KEY_ID_LEN],
    signature: [u8; 64],
    /// Length of the signed prefix (header + manifest + payload).
    signed_len: usize,
}

/// A package whose signature was checked against a trusted key and whose
/// payload is a relocatable object for the manifest's machine.
#[derive(Debug, Clone)]
pub struct VerifiedPackage {
    pub manifest: Manifest,
    pub payload: Vec<u8>,
    pub key_id: String,
}

fn take<'a>(bytes: &'a [u8], at: usize, len: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
    at.checked_add(len).and_then(|end| bytes.get(at..end)).ok_or(FormatError::Truncated {
        what,
        needed: (at as u64).saturating_add(len as u64),
        available: bytes.len() as u64,
    })
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl Package {
    /// Parses the container and checks the manifest and payload hash. Never
    /// panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<Package, FormatError> {
        let header = take(bytes, 0, HEADER_LEN, "header")?;
        if &header[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16_at(header, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
        }
        let reserved = u16_at(header, 10);
        if reserved != 0 {
            return Err(FormatError::ReservedNotZero(reserved));
        }
        let manifest_len = u32_at(header, 12) as usize;
        let payload_len = u32_at(header, 16) as usize;
        if manifest_len > MAX_MANIFEST_LEN {
            return Err(FormatError::TooLarge {
                what: "manifest",
                len: manifest_len as u64,
                limit: MAX_MANIFEST_LEN as u64,
            });
        }
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(FormatError::TooLarge {
                what: "payload",
                len: payload_len as u64,
                limit: MAX_PAYLOAD_LEN as u64,
            });
        }
        let manifest_bytes = take(bytes, HEADER_LEN, manifest_len, "manifest")?;
        let payload = take(bytes, HEADER_LEN + manifest_len, payload_len, "payload")?;
        let signed_len = HEADER_LEN + manifest_len + payload_len;
        let block = take(bytes, signed_len, SIGNATURE_BLOCK_LEN, "signature block")?;
        let end = signed_len + SIGNATURE_BLOCK_LEN;
        if bytes.len() > end {
            return Err(FormatError::TrailingBytes((bytes.len() - end) as u64));
        }

        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| FormatError::Manifest(format!("not valid JSON: {e}")))?;
        manifest.validate()?;
        let actual = sha256_hex(payload);
        if actual != manifest.payload_sha256 {
            return Err(FormatError::PayloadHashMismatch { expected: manifest.payload_sha256.clone(), actual });
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&block[..KEY_ID_LEN]);
        if key_id_hex(&key_id) != manifest.signing_key_id {
            return Err(FormatError::KeyIdMismatch {
                block: key_id_hex(&key_id),
                manifest: manifest.signing_key_id.clone(),
            });
        }
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&block[KEY_ID_LEN..]);
        Ok(Package { manifest, payload: payload.to_vec(), key_id, signature, signed_len })
    }

    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key_id)
    }

    /// Builds and signs a package. `manifest.payload_sha256` and
    /// `manifest.signing_key_id` are filled in here; the rest must be valid.
    pub fn build(mut manifest: Manifest, payload: &[u8], key: &SecretKey) -> Result<Vec<u8>, FormatError> {
        manifest.payload_sha256 = sha256_hex(payload);
        manifest.signing_key_id = key.public().id_hex();
        manifest.validate()?;
        let manifest_bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|e| FormatError::Manifest(format!("cannot encode: {e}")))?;
        if manifest_bytes.len() > MAX_MANIFEST_LEN {
            return Err(FormatError::TooLarge {
                what: "manifest",
                len: manifest_bytes.len() as u64,
                limit: MAX_MANIFEST_LEN as u64,
            });
        }
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(FormatError::TooLarge {
                what: "payload",
                len: payload.len() as u64,
                limit: MAX_PAYLOAD_LEN as u64,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + manifest_bytes.len() + payload.len() + SIGNATURE_BLOCK_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(manifest_bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&manifest_bytes);
        out.extend_from_slice(payload);
        let signature = key.sign(&out);
        out.extend_from_slice(&key.public().id());
        out.extend_from_slice(&signature);
        Ok(out)
    }
}

/// Parses `bytes`, checks the signature against `trust`, then checks that the
/// payload is a relocatable object for the manifest's machine. The only way to
/// obtain a [`VerifiedPackage`].
pub fn verify(bytes: &[u8], trust: &TrustStore) -> Result<VerifiedPackage, FormatError> {
    let package = Package::parse(bytes)?;
    let key = trust.get(&package.key_id).ok_or_else(|| FormatError::UnknownKey(package.key_id_hex()))?;
    if !key.verify(&bytes[..package.signed_len], &package.signature) {
        return Err(FormatError::BadSignature(package.key_id_hex()));
    }
    crate::payload::check_payload(&package.payload, package.manifest.target.machine)?;
    Ok(VerifiedPackage { key_id: package.key_id_hex(), manifest: package.manifest, payload: package.payload })
}
