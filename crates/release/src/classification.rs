//! What kind of fix an update carries, and whether that kind may ship as a hotpatch.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The class of an update. Only security and critical fixes may ship as hotpatches;
/// everything else waits for the next baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Classification {
    Security,
    Critical,
    NonSecurity,
    Runtime,
    ThirdParty,
    FirmwareDriver,
}

impl Classification {
    pub const ALL: [Classification; 6] = [
        Classification::Security,
        Classification::Critical,
        Classification::NonSecurity,
        Classification::Runtime,
        Classification::ThirdParty,
        Classification::FirmwareDriver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Security => "security",
            Classification::Critical => "critical",
            Classification::NonSecurity => "non-security",
            Classification::Runtime => "runtime",
            Classification::ThirdParty => "third-party",
            Classification::FirmwareDriver => "firmware-driver",
        }
    }

    /// Whether a fix of this class may be delivered as a hotpatch (no restart).
    pub fn hotpatchable(self) -> bool {
        matches!(self, Classification::Security | Classification::Critical)
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown classification {0:?} (expected one of: security, critical, non-security, runtime, third-party, firmware-driver)"
)]
pub struct UnknownClassification(pub String);

impl FromStr for Classification {
    type Err = UnknownClassification;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace(['_', '/'], "-");
        Classification::ALL
            .into_iter()
            .find(|c| c.as_str() == wanted)
            .ok_or_else(|| UnknownClassification(s.to_string()))
    }
}
