//! Small helpers shared by the handlers: clock, random ids and secrets, hashing.

use sha2::{Digest, Sha256};

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// 128 random bits as hex: unguessable, so ids leak nothing about counts.
pub fn new_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// A bearer secret: 256 random bits, with a prefix that says what it is for so a
/// leaked one can be recognised (`hpu_` user token, `hpe_` enrollment token).
pub fn new_secret(prefix: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// Secrets are stored only as this hash. A plain SHA-256 suffices because the
/// secrets are 256 random bits: there is nothing to brute-force.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Days since the unix epoch (UTC) of a unix time: the unit of metering.
pub fn day_of(unix: i64) -> i64 {
    unix.div_euclid(86_400)
}

pub fn rfc3339(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string())
}

pub fn parse_time(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}
