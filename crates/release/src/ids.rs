//! Validated names that travel between agent, server and catalog: baseline ids,
//! build-ids, patch ids and CVE ids. Each is checked once, at the edge (construction
//! or deserialization), so the decision logic never sees a malformed one.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value:?} is longer than {max} characters")]
    TooLong { kind: &'static str, value: String, max: usize },
    #[error("{kind} {value:?} contains {bad:?}; allowed: {allowed}")]
    BadCharacter { kind: &'static str, value: String, bad: char, allowed: &'static str },
    #[error("build-id {0:?} has an odd number of hex digits")]
    OddBuildId(String),
    #[error("CVE id {0:?} is not of the form CVE-YYYY-NNNN (four or more digits)")]
    BadCve(String),
}

fn check_token(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.chars().count() > max {
        return Err(IdError::TooLong { kind, value: value.to_string(), max });
    }
    if let Some(bad) = value.chars().find(|c| !ok(*c)) {
        return Err(IdError::BadCharacter { kind, value: value.to_string(), bad, allowed });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value: String = value.into();
                let check: fn(String) -> Result<String, IdError> = $check;
                check(value).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

const NAME_CHARS: &str = "ASCII letters, digits, '.', '-', '_', '+'";

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+')
}

string_id!(
    /// A baseline's release name within its product, e.g. `2027.01` or `2027.05-zd1`.
    BaselineId,
    |v| check_token("baseline id", &v, 64, NAME_CHARS, name_char).map(|()| v)
);

string_id!(
    /// A hotpatch's catalog id (what the agent downloads and the journal records).
    PatchId,
    |v| check_token("patch id", &v, 128, NAME_CHARS, name_char).map(|()| v)
);

string_id!(
    /// A product (a family of targets released together), e.g. `openssl`.
    ProductName,
    |v| check_token("product", &v, 64, NAME_CHARS, name_char).map(|()| v)
);

string_id!(
    /// A GNU build-id as lowercase hex. Upper-case input is accepted and folded, so
    /// the same ELF note always compares equal however it was printed.
    BuildId,
    |v| {
        let v = v.to_ascii_lowercase();
        check_token("build-id", &v, 128, "hex digits", |c| c.is_ascii_hexdigit())?;
        if v.len() % 2 != 0 {
            return Err(IdError::OddBuildId(v));
        }
        Ok(v)
    }
);

string_id!(
    /// A CVE id such as `CVE-2027-1234`; upper-case form is kept.
    CveId,
    |v| {
        let upper = v.to_ascii_uppercase();
        let mut parts = upper.splitn(3, '-');
        let ok = parts.next() == Some("CVE")
            && parts
                .next()
                .is_some_and(|y| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|n| (4..=19).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()));
        if ok { Ok(upper) } else { Err(IdError::BadCve(v)) }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_folds_case_and_refuses_non_hex() {
        assert_eq!(BuildId::new("ABCD01").unwrap().as_str(), "abcd01");
        assert!(matches!(BuildId::new("abz0"), Err(IdError::BadCharacter { bad: 'z', .. })));
        assert!(matches!(BuildId::new("abc"), Err(IdError::OddBuildId(_))));
        assert!(matches!(BuildId::new(""), Err(IdError::Empty { .. })));
    }

    #[test]
    fn cve_shape_is_checked() {
        assert_eq!(CveId::new("cve-2027-1234").unwrap().as_str(), "CVE-2027-1234");
        for bad in ["CVE-27-1234", "CVE-2027-12", "CVE-2027-12a4", "2027-1234", "CVE-2027"] {
            assert!(matches!(CveId::new(bad), Err(IdError::BadCve(_))), "{bad}");
        }
    }

    #[test]
    fn deserializing_validates() {
        let err = serde_json::from_str::<BaselineId>("\"2027 01\"").unwrap_err();
        assert!(err.to_string().contains("baseline id"), "{err}");
        let ok: BaselineId = serde_json::from_str("\"2027.01\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"2027.01\"");
    }
}
