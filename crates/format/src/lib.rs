//! The hotpatch package (`.hpatch`): a manifest that says what the hotpatch is
//! and where it applies, the payload (a relocatable ELF object holding the
//! replacement functions), and a detached ed25519 signature over the exact bytes
//! of both. The byte layout is documented in `docs/FORMAT.md`.
//!
//! Everything here is pure and parses untrusted bytes: every malformed input is
//! a [`FormatError`] naming the problem, never a panic. Verification is the only
//! way to a [`VerifiedPackage`], so code that applies a hotpatch can demand one.

mod error;
mod keys;
mod manifest;
mod package;
mod payload;
mod rotation;
mod signed;

pub use error::FormatError;
pub use hotpatch_release::Classification;
pub use keys::{KEY_ID_LEN, KeyError, PublicKey, SecretKey, TrustStore, key_id_hex};
pub use manifest::{BaselineSymbol, FunctionPatch, MIN_SITE_SIZE, Machine, Manifest, Target};
pub use package::{
    FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_MANIFEST_LEN, MAX_PAYLOAD_LEN, Package, SIGNATURE_BLOCK_LEN,
    VerifiedPackage, verify,
};
pub use payload::check_payload;
pub use rotation::{Followed, KeysMetadata, MAX_PUBLISHER_KEYS, Publisher, Publishers};
pub use signed::{
    CatalogEntry, CatalogMetadata, DocumentKind, MAX_DOCUMENT_LEN, MAX_SIGNED_LEN, Revocation, RevocationStatement,
    SignedDocument, VerifiedCatalog, verify_catalog, verify_revocation,
};

/// Lower-case hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
