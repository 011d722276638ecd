//! Key rotation in the spirit of TUF's root role (docs/FORMAT.md, "Publisher
//! keys documents"). A publisher is named by its *anchor*: the id of the key a
//! machine's trust directory holds for it. A keys document, signed by one of
//! the publisher's current keys, says which keys speak for it from its version
//! on; the keys it drops are retired and sign nothing afterwards, and never
//! come back. Versions only grow, so an old keys document replayed (to bring a
//! retired key back) is refused. Machines follow the chain from their anchor,
//! so a new key reaches the fleet without an operator copying files.
//!
//! Threshold one: whoever holds a current key can rotate. A stolen key is
//! retired by rotating away from it with another current key (a publisher
//! keeps two), or by a root operator on the machine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::keys::{KEY_ID_LEN, PublicKey, SecretKey, TrustStore};
use crate::manifest::check_hex;
use crate::signed::{DocumentKind, SignedDocument, bad, clip, parse_time};
use crate::{FormatError, sha256_hex};

/// Keys one publisher may name at once.
pub const MAX_PUBLISHER_KEYS: usize = 16;

/// Which keys speak for `publisher` from `version` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysMetadata {
    /// The anchor: id of the key the machines' trust directories hold.
    pub publisher: String,
    /// 1 for the first rotation; the anchor alone is version 0.
    pub version: u64,
    pub issued: String,
    /// Public keys in their `.pub` text form.
    pub keys: Vec<String>,
}

impl KeysMetadata {
    fn validate(&self) -> Result<Vec<PublicKey>, FormatError> {
        check_hex("keys publisher", &self.publisher, KEY_ID_LEN..=KEY_ID_LEN).map_err(to_signed)?;
        parse_time("issued", &self.issued)?;
        if self.version == 0 {
            return Err(bad("keys document version must be at least 1 (the anchor alone is version 0)"));
        }
        if self.keys.is_empty() || self.keys.len() > MAX_PUBLISHER_KEYS {
            return Err(bad(format!("keys document must name 1 to {MAX_PUBLISHER_KEYS} keys")));
        }
        let keys = self
            .keys
            .iter()
            .map(|k| PublicKey::parse(k, "keys document").map_err(|e| bad(format!("key {:?}: {e}", clip(k)))))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: BTreeSet<String> = keys.iter().map(PublicKey::id_hex).collect();
        if ids.len() != keys.len() {
            return Err(bad("keys document names a key twice"));
        }
        Ok(keys)
    }

    /// Signs the document with one of the publisher's current keys.
    pub fn sign(&self, key: &SecretKey) -> Result<SignedDocument, FormatError> {
        self.validate()?;
        let body = serde_json::to_string(self).map_err(|e| bad(e.to_string()))?;
        Ok(SignedDocument::sign(DocumentKind::Keys, body, key))
    }
}

fn to_signed(e: FormatError) -> FormatError {
    match e {
        FormatError::Manifest(m) => FormatError::Signed(m),
        other => other,
    }
}

/// One publisher's place in its chain of keys documents.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub anchor: String,
    /// Version of the last keys document followed (0: the anchor alone).
    pub version: u64,
    pub keys: TrustStore,
    /// Keys dropped by a rotation: trusted for nothing from then on.
    pub retired: BTreeSet<String>,
    /// SHA-256 of the keys document at `version`, to tell a same-version forgery.
    pub sha256: Option<String>,
}

/// What [`Publishers::follow`] made of a keys document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// The publisher moved to this version; these keys were retired by it.
    Rotated { anchor: String, version: u64, retired: Vec<String> },
    /// The document is the one already followed.
    Known,
}

/// Every publisher a machine trusts, each following its chain of keys documents.
#[derive(Debug, Clone, Default)]
pub struct Publishers {
    by_anchor: BTreeMap<String, Publisher>,
}

impl Publishers {
    /// Each key of the trust directory starts its own publisher at version 0.
    pub fn from_anchors(anchors: &TrustStore) -> Publishers {
        let by_anchor = anchors
            .keys()
            .map(|k| {
                let anchor = k.id_hex();
                let p = Publisher {
                    anchor: anchor.clone(),
                    version: 0,
                    keys: TrustStore::from_keys([k.clone()]),
                    retired: BTreeSet::new(),
                    sha256: None,
                };
                (anchor, p)
            })
            .collect();
        Publishers { by_anchor }
    }

    pub fn get(&self, anchor: &str) -> Option<&Publisher> {
        self.by_anchor.get(anchor)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Publisher> + '_ {
        self.by_anchor.values()
    }

    /// The anchor of the publisher whose current key `key_id` is.
    pub fn publisher_of(&self, key_id: &str) -> Option<&str> {
        self.by_anchor.values().find(|p| p.keys.key_ids().any(|k| k == key_id)).map(|p| p.anchor.as_str())
    }

    /// Whether `key_id` is one of `anchor`'s keys, now or retired.
    pub fn owns(&self, anchor: &str, key_id: &str) -> bool {
        self.by_anchor.get(anchor).is_some_and(|p| p.retired.contains(key_id) || p.keys.key_ids().any(|k| k == key_id))
    }

    /// Every current key of every publisher.
    pub fn trust(&self) -> TrustStore {
        TrustStore::from_keys(self.by_anchor.values().flat_map(|p| p.keys.keys().cloned()).collect::<Vec<_>>())
    }

    /// Takes out keys revoked by other means (catalog metadata): they count as
    /// retired. A publisher left with no key trusts nothing.
    pub fn without(&self, revoked: &BTreeSet<String>) -> Publishers {
        let mut out = self.clone();
        for p in out.by_anchor.values_mut() {
            let (gone, kept): (Vec<PublicKey>, Vec<PublicKey>) =
                p.keys.keys().cloned().partition(|k| revoked.contains(&k.id_hex()));
            p.retired.extend(gone.iter().map(PublicKey::id_hex));
            p.keys = TrustStore::from_keys(kept);
        }
        out
    }

    /// The anchor of the publisher that retired (or had revoked) `key_id`.
    pub fn retired_by(&self, key_id: &str) -> Option<&str> {
        self.by_anchor.values().find(|p| p.retired.contains(key_id)).map(|p| p.anchor.as_str())
    }

    /// Follows one keys document: signed by a current key of the publisher it
    /// names, a version above the one followed (the same version only as the
    /// same document), and no retired key brought back.
    pub fn follow(&mut self, doc: &SignedDocument) -> Result<Followed, FormatError> {
        if doc.kind != DocumentKind::Keys {
            return Err(bad(format!("expected a Keys document, found {:?}", doc.kind)));
        }
        let claimed: KeysMetadata =
            serde_json::from_str(&doc.signed).map_err(|e| bad(format!("keys document is malformed: {e}")))?;
        let publisher = self.by_anchor.get_mut(&claimed.publisher).ok_or_else(|| {
            bad(format!(
                "keys document names publisher {}, whose key this machine does not hold",
                clip(&claimed.publisher)
            ))
        })?;
        let sha = sha256_hex(doc.signed.as_bytes());
        if claimed.version < publisher.version || (claimed.version == publisher.version && publisher.sha256.is_none()) {
            return Err(replay(&claimed, publisher.version));
        }
        if claimed.version == publisher.version {
            if publisher.sha256.as_deref() == Some(sha.as_str()) {
                return Ok(Followed::Known);
            }
            return Err(bad(format!(
                "keys document version {} of publisher {} differs from the one followed before",
                claimed.version, claimed.publisher
            )));
        }
        doc.open(DocumentKind::Keys, &publisher.keys).map_err(|e| match e {
            FormatError::UnknownKey(k) => bad(format!(
                "keys document version {} is signed by key {k}, not a current key of publisher {} (a retired key signs nothing)",
                claimed.version, claimed.publisher
            )),
            other => other,
        })?;
        let keys = claimed.validate()?;
        if let Some(back) = keys.iter().map(PublicKey::id_hex).find(|k| publisher.retired.contains(k)) {
            return Err(bad(format!("keys document brings back key {back}, retired before")));
        }
        let next: BTreeSet<String> = keys.iter().map(PublicKey::id_hex).collect();
        let retired: Vec<String> = publisher.keys.key_ids().filter(|k| !next.contains(k)).collect();
        publisher.retired.extend(retired.iter().cloned());
        publisher.keys = TrustStore::from_keys(keys);
        publisher.version = claimed.version;
        publisher.sha256 = Some(sha);
        Ok(Followed::Rotated { anchor: claimed.publisher, version: claimed.version, retired })
    }
}

fn replay(claimed: &KeysMetadata, followed: u64) -> FormatError {
    bad(format!(
        "keys document version {} of publisher {} refused: version {followed} was followed before (an old document replayed)",
        claimed.version, claimed.publisher
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed([seed; 32])
    }

    fn keys_doc(anchor: &SecretKey, version: u64, keys: &[&SecretKey], signer: &SecretKey) -> SignedDocument {
        KeysMetadata {
            publisher: anchor.public().id_hex(),
            version,
            issued: "2026-12-01T00:00:00Z".into(),
            keys: keys.iter().map(|k| k.public().to_text().trim().to_string()).collect(),
        }
        .sign(signer)
        .expect("sign")
    }

    #[test]
    fn a_rotation_retires_the_old_key_for_good_and_versions_only_grow() {
        let (old, new, newer) = (key(1), key(2), key(3));
        let anchor = old.public().id_hex();
        let mut p = Publishers::from_anchors(&TrustStore::from_keys([old.public()]));
        let v1 = keys_doc(&old, 1, &[&new], &old);
        let got = p.follow(&v1).expect("rotate");
        assert_eq!(got, Followed::Rotated { anchor: anchor.clone(), version: 1, retired: vec![anchor.clone()] });
        assert_eq!(p.publisher_of(&new.public().id_hex()), Some(anchor.as_str()));
        assert!(p.publisher_of(&anchor).is_none() && p.owns(&anchor, &anchor));
        assert_eq!(p.follow(&v1).expect("again"), Followed::Known);

        // The retired key signs nothing, not even a rotation back to itself.
        let back = keys_doc(&old, 2, &[&old], &old);
        assert!(p.follow(&back).expect_err("retired signer").to_string().contains("retired key signs nothing"));
        let back = keys_doc(&old, 2, &[&old, &new], &new);
        assert!(p.follow(&back).expect_err("retired key back").to_string().contains("retired before"));

        let v2 = keys_doc(&old, 2, &[&newer], &new);
        assert!(matches!(p.follow(&v2), Ok(Followed::Rotated { version: 2, .. })));
        assert!(p.follow(&v1).expect_err("replay").to_string().contains("replayed"));
        let forged = keys_doc(&old, 2, &[&newer, &new], &newer);
        assert!(p.follow(&forged).expect_err("same version").to_string().contains("differs"));
    }

    #[test]
    fn a_keys_document_is_only_for_a_publisher_the_machine_holds_and_well_formed() {
        let (a, b) = (key(4), key(5));
        let mut p = Publishers::from_anchors(&TrustStore::from_keys([a.public()]));
        let foreign = keys_doc(&b, 1, &[&b], &b);
        assert!(p.follow(&foreign).expect_err("foreign").to_string().contains("does not hold"));
        // b signs a rotation of a's keys: not a's key.
        let hijack = keys_doc(&a, 1, &[&b], &b);
        assert!(p.follow(&hijack).is_err());
        let mut m = KeysMetadata { publisher: a.public().id_hex(), version: 1, issued: "x".into(), keys: vec![] };
        assert!(m.sign(&a).is_err());
        m.issued = "2026-12-01T00:00:00Z".into();
        assert!(m.sign(&a).expect_err("no keys").to_string().contains("1 to 16 keys"));
        m.keys = vec!["hotpatch-public-key-v1 zz".into()];
        assert!(m.sign(&a).is_err());
        let as_catalog = SignedDocument { kind: DocumentKind::Catalog, ..keys_doc(&a, 1, &[&b], &a) };
        assert!(p.follow(&as_catalog).is_err());
    }
}
