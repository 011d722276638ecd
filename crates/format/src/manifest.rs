//! The manifest: what a hotpatch is, which baseline it applies to, and what it
//! expects to find there.

use crate::FormatError;
use hotpatch_release::Classification;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The smallest function that can become a patch site: a `jmp rel32` is 5 bytes,
/// and the patch region is always placed within ±2 GiB of the target.
pub const MIN_SITE_SIZE: u64 = 5;

const MAX_FUNCTIONS: usize = 4096;
const MAX_FUNCTION_SIZE: u64 = 16 << 20;
const MAX_SYMBOLS: usize = 65536;
const MAX_CVES: usize = 256;
const MAX_TEXT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    #[serde(rename = "x86_64")]
    X86_64,
    Aarch64,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::X86_64 => "x86_64",
            Machine::Aarch64 => "aarch64",
        }
    }

    pub fn elf_machine(self) -> u16 {
        match self {
            Machine::X86_64 => object::elf::EM_X86_64,
            Machine::Aarch64 => object::elf::EM_AARCH64,
        }
    }

    pub fn from_elf(e_machine: u16) -> Option<Machine> {
        match e_machine {
            object::elf::EM_X86_64 => Some(Machine::X86_64),
            object::elf::EM_AARCH64 => Some(Machine::Aarch64),
            _ => None,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The baseline a hotpatch applies to: exactly one build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// GNU build-id of the baseline, lower-case hex.
    pub build_id: String,
    /// File name of the baseline, a hint for people (matching is by build-id only).
    pub file_name: String,
    pub machine: Machine,
}

/// One replaced function: the old function in the baseline and its replacement
/// in the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionPatch {
    /// Symbol of the old function in the baseline.
    pub symbol: String,
    /// Source file (the `STT_FILE` symbol) of a file-local symbol whose name is
    /// not unique in the baseline; absent when the name alone is unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Size of the old function in bytes (`st_size`).
    pub size: u64,
    /// SHA-256 of the old function's bytes in the baseline, checked before any write.
    pub original_sha256: String,
    /// Symbol of the replacement function in the payload.
    pub replacement: String,
    /// Link-time address of the old function in the baseline (`st_value`), set
    /// by the builder once its own build was proven to be the baseline's code:
    /// the engine then needs no symbol table (the baseline may be stripped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<u64>,
}

impl FunctionPatch {
    /// `file:symbol` when disambiguated, else `symbol`: how people name it.
    pub fn display_name(&self) -> String {
        match &self.file {
            Some(file) => format!("{file}:{}", self.symbol),
            None => self.symbol.clone(),
        }
    }
}

/// A name of the payload bound to an address in the baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSymbol {
    pub name: String,
    /// Link-time address in the baseline (before the load bias).
    pub address: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u16,
    pub patch_id: String,
    pub product: String,
    pub target: Target,
    /// Cumulative sequence number within the baseline, from 1.
    pub level: u32,
    pub classification: Classification,
    #[serde(default)]
    pub cves: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// Creation time, RFC 3339 in UTC.
    pub created: String,
    pub functions: Vec<FunctionPatch>,
    /// Baseline symbols the payload refers to, by their name in the payload,
    /// at link-time addresses the builder proved (run-pre match). The engine
    /// binds these names to them before any other lookup, so a stripped
    /// baseline needs no symbols and a file-local name is never ambiguous.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symbols: Vec<BaselineSymbol>,
    pub payload_sha256: String,
    /// Id (hex) of the key that signed the package.
    pub signing_key_id: String,
}

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError::Manifest(msg.into())
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn check_hex(field: &str, value: &str, bytes: std::ops::RangeInclusive<usize>) -> Result<(), FormatError> {
    if !is_lower_hex(value) || !value.len().is_multiple_of(2) || !bytes.contains(&(value.len() / 2)) {
        return Err(bad(format!(
            "{field} must be lower-case hex of {} to {} bytes, found {:?}",
            bytes.start(),
            bytes.end(),
            clip(value)
        )));
    }
    Ok(())
}

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

pub(crate) fn check_text(field: &str, value: &str, min: usize, max: usize) -> Result<(), FormatError> {
    if value.len() < min || value.len() > max {
        return Err(bad(format!("{field} must be {min} to {max} bytes long, found {}", value.len())));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(bad(format!("{field} contains control characters")));
    }
    Ok(())
}

/// Patch ids name files and memory regions (`/memfd:hotpatch:<id>`), so they are
/// kept to a conservative character set.
pub fn check_patch_id(id: &str) -> Result<(), FormatError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > 64 || !id.chars().all(ok_char) || id.starts_with(['.', '-']) {
        return Err(bad(format!(
            "patch_id must be 1-64 characters of [A-Za-z0-9._-], not starting with '.' or '-', found {:?}",
            clip(id)
        )));
    }
    Ok(())
}

fn check_cve(cve: &str) -> Result<(), FormatError> {
    let mut parts = cve.split('-');
    let ok = parts.next() == Some("CVE")
        && parts.next().is_some_and(|y| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_some_and(|n| (4..=12).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_none();
    if !ok {
        return Err(bad(format!("{:?} is not a CVE id (CVE-YYYY-NNNN)", clip(cve))));
    }
    Ok(())
}

impl Manifest {
    /// Checks every field's shape; the package layer checks hashes and signature.
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.format_version != crate::FORMAT_VERSION {
            return Err(bad(format!("format_version is {}, expected {}", self.format_version, crate::FORMAT_VERSION)));
        }
        check_patch_id(&self.patch_id)?;
        check_text("product", &self.product, 1, 128)?;
        check_hex("target.build_id", &self.target.build_id, 4..=64)?;
        check_text("target.file_name", &self.target.file_name, 1, 255)?;
        if self.target.file_name.contains('/') {
            return Err(bad("target.file_name must be a file name, not a path"));
        }
        if self.level == 0 {
            return Err(bad("level must be at least 1"));
        }
        if self.cves.len() > MAX_CVES {
            return Err(bad(format!("at most {MAX_CVES} CVE ids, found {}", self.cves.len())));
        }
        self.cves.iter().try_for_each(|c| check_cve(c))?;
        check_text("description", &self.description, 0, MAX_TEXT)?;
        self.created
            .parse::<jiff::Timestamp>()
            .map_err(|e| bad(format!("created {:?} is not an RFC 3339 time: {e}", clip(&self.created))))?;
        if self.functions.is_empty() {
            return Err(bad("functions is empty: a hotpatch replaces at least one function"));
        }
        if self.functions.len() > MAX_FUNCTIONS {
            return Err(bad(format!("at most {MAX_FUNCTIONS} functions, found {}", self.functions.len())));
        }
        let mut seen = BTreeSet::new();
        for f in &self.functions {
            check_text("functions[].symbol", &f.symbol, 1, 1024)?;
            check_text("functions[].replacement", &f.replacement, 1, 1024)?;
            if let Some(file) = &f.file {
                check_text("functions[].file", file, 1, 1024)?;
            }
            if f.size < MIN_SITE_SIZE {
                return Err(bad(format!(
                    "function {} is {} bytes, too small for the {MIN_SITE_SIZE}-byte jump",
                    f.display_name(),
                    f.size
                )));
            }
            if f.size > MAX_FUNCTION_SIZE {
                return Err(bad(format!("function {} size {} is implausibly large", f.display_name(), f.size)));
            }
            check_hex("functions[].original_sha256", &f.original_sha256, 32..=32)?;
            if !seen.insert((f.symbol.as_str(), f.file.as_deref())) {
                return Err(bad(format!("function {} is listed twice", f.display_name())));
            }
        }
        self.validate_symbols()?;
        check_hex("payload_sha256", &self.payload_sha256, 32..=32)?;
        check_hex("signing_key_id", &self.signing_key_id, crate::KEY_ID_LEN..=crate::KEY_ID_LEN)?;
        Ok(())
    }

    fn validate_symbols(&self) -> Result<(), FormatError> {
        if self.symbols.len() > MAX_SYMBOLS {
            return Err(bad(format!("at most {MAX_SYMBOLS} symbols, found {}", self.symbols.len())));
        }
        let mut seen = BTreeSet::new();
        for s in &self.symbols {
            check_text("symbols[].name", &s.name, 1, 1024)?;
            if !seen.insert(s.name.as_str()) {
                return Err(bad(format!("symbol {:?} is listed twice", clip(&s.name))));
            }
        }
        Ok(())
    }

    /// Whether this hotpatch's class may ship without a restart at all.
    pub fn hotpatchable(&self) -> bool {
        self.classification.hotpatchable()
    }
}
