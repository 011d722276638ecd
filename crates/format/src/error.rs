use crate::keys::KeyError;

/// Why a package was refused. Each message names the problem so an operator can
/// act on it without reading code.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("package is truncated: {what} needs {needed} bytes, only {available} present")]
    Truncated { what: &'static str, needed: u64, available: u64 },
    #[error("not a hotpatch package: wrong magic bytes (expected \"HOTPATCH\")")]
    BadMagic,
    #[error("unsupported package format version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("reserved header field is {0:#x}, must be 0")]
    ReservedNotZero(u16),
    #[error("{what} is {len} bytes, larger than the limit of {limit} bytes")]
    TooLarge { what: &'static str, len: u64, limit: u64 },
    #[error("{0} unexpected bytes after the signature block")]
    TrailingBytes(u64),
    #[error("manifest is not valid: {0}")]
    Manifest(String),
    #[error("payload hash mismatch: manifest says {expected}, payload hashes to {actual}")]
    PayloadHashMismatch { expected: String, actual: String },
    #[error("signature block names key {block}, but the manifest names key {manifest}")]
    KeyIdMismatch { block: String, manifest: String },
    #[error("package is signed by key {0}, which is not trusted")]
    UnknownKey(String),
    #[error("bad signature: the package was altered or not signed by key {0}")]
    BadSignature(String),
    #[error("payload is not a usable replacement object: {0}")]
    Payload(String),
    #[error("signed document is not valid: {0}")]
    Signed(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}
