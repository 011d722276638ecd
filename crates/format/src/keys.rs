//! Publisher keys: ed25519 key pairs in small text files, and the set of public
//! keys a machine or server trusts.

use ed25519_dalek::{Signer, Verifier};
use sha2::Digest;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes of a key id: the first bytes of SHA-256 over the public key.
pub const KEY_ID_LEN: usize = 8;

const SECRET_TAG: &str = "hotpatch-secret-key-v1";
const PUBLIC_TAG: &str = "hotpatch-public-key-v1";
/// Domain separation: a signature over a package can never be mistaken for a
/// signature over anything else signed with the same key.
pub(crate) const SIGNING_CONTEXT: &[u8] = b"hotpatch package v1\0";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: {problem}")]
    Malformed { path: String, problem: String },
    #[error("no public keys (*.pub) found in {0}")]
    NoKeys(PathBuf),
    #[error("the system random number generator failed: {0}")]
    Random(String),
    #[error("refusing to overwrite existing key file {0}")]
    Exists(PathBuf),
}

/// The id of a public key, as lower-case hex.
pub fn key_id_hex(id: &[u8; KEY_ID_LEN]) -> String {
    hex::encode(id)
}

fn key_id_of(public: &ed25519_dalek::VerifyingKey) -> [u8; KEY_ID_LEN] {
    let digest = sha2::Sha256::digest(public.as_bytes());
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

/// A publisher's secret signing key.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SecretKey {
    // Never print key material, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public().id_hex())
    }
}

impl SecretKey {
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn parse(text: &str, origin: &str) -> Result<SecretKey, KeyError> {
        let bytes = parse_tagged(text, SECRET_TAG, origin)?;
        Ok(SecretKey::from_seed(bytes))
    }

    pub fn to_text(&self) -> String {
        format!("{SECRET_TAG} {}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        SecretKey::parse(&text, &path.display().to_string())
    }

    /// Writes the key readable by its owner only; refuses to replace a file.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_new(path, &self.to_text(), 0o600)
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.sign_in(SIGNING_CONTEXT, message)
    }

    /// Signs `message` under a context string of its own, so that what is
    /// signed for one purpose (a package, catalog metadata, a rollback) can
    /// never be presented as signed for another.
    pub(crate) fn sign_in(&self, context: &[u8], message: &[u8]) -> [u8; 64] {
        let mut full = Vec::with_capacity(context.len() + message.len());
        full.extend_from_slice(context);
        full.extend_from_slice(message);
        self.0.sign(&full).to_bytes()
    }
}

/// A publisher's public key, used to verify packages.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id_hex())
    }
}

impl PublicKey {
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        key_id_of(&self.0)
    }

    pub fn id_hex(&self) -> String {
        key_id_hex(&self.id())
    }

    pub fn parse(text: &str, origin: &str) -> Result<PublicKey, KeyError> {
        let bytes = parse_tagged(text, PUBLIC_TAG, origin)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::Malformed { path: origin.into(), problem: "not a valid ed25519 public key".into() })
    }

    pub fn to_text(&self) -> String {
        format!("{PUBLIC_TAG} {}\n", hex::encode(self.0.as_bytes()))
    }

    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        PublicKey::parse(&text, &path.display().to_string())
    }

    /// Writes the key; refuses to replace a file (a trusted key silently
    /// swapped would change whose packages verify).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        write_new(path, &self.to_text(), 0o644)
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.verify_in(SIGNING_CONTEXT, message, signature)
    }

    pub(crate) fn verify_in(&self, context: &[u8], message: &[u8], signature: &[u8; 64]) -> bool {
        let mut full = Vec::with_capacity(context.len() + message.len());
        full.extend_from_slice(context);
        full.extend_from_slice(message);
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        // verify_strict rejects malleable and small-order forms that plain verify accepts.
        self.0.verify_strict(&full, &sig).is_ok() && self.0.verify(&full, &sig).is_ok()
    }
}

/// Creates `path` with `mode` (before umask) and writes `text`; an existing
/// file of any kind is refused, never replaced.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.into())
        } else {
            KeyError::Write { path: path.into(), source }
        }
    })?;
    file.write_all(text.as_bytes()).map_err(|source| KeyError::Write { path: path.into(), source })
}

fn parse_tagged(text: &str, tag: &str, origin: &str) -> Result<[u8; 32], KeyError> {
    let malformed = |problem: String| KeyError::Malformed { path: origin.into(), problem };
    let line = text.trim();
    let mut parts = line.split_whitespace();
    let found_tag = parts.next().unwrap_or("");
    if found_tag != tag {
        return Err(malformed(format!("expected a line starting with {tag:?}, found {:?}", truncate(found_tag))));
    }
    let value = parts.next().ok_or_else(|| malformed("key value missing after the tag".into()))?;
    if parts.next().is_some() {
        return Err(malformed("unexpected text after the key value".into()));
    }
    let bytes = hex::decode(value).map_err(|_| malformed("key value is not hex".into()))?;
    bytes.try_into().map_err(|v: Vec<u8>| malformed(format!("key value is {} bytes, expected 32", v.len())))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The public keys whose signatures are accepted, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: BTreeMap<[u8; KEY_ID_LEN], PublicKey>,
}

impl TrustStore {
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> TrustStore {
        TrustStore { keys: keys.into_iter().map(|k| (k.id(), k)).collect() }
    }

    /// A single `.pub` file, or every `*.pub` file in a directory.
    pub fn load(path: &Path) -> Result<TrustStore, KeyError> {
        let meta = fs::metadata(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        if !meta.is_dir() {
            return Ok(TrustStore::from_keys([PublicKey::load(path)?]));
        }
        let entries = fs::read_dir(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| KeyError::Read { path: path.into(), source })?;
            let file = entry.path();
            if file.extension().is_some_and(|e| e == "pub") {
                keys.push(PublicKey::load(&file)?);
            }
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys(path.into()));
        }
        Ok(TrustStore::from_keys(keys))
    }

    pub fn get(&self, id: &[u8; KEY_ID_LEN]) -> Option<&PublicKey> {
        self.keys.get(id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> + '_ {
        self.keys.values()
    }

    pub fn key_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.keys.keys().map(key_id_hex)
    }
}
