//! Everything that can go wrong while reading or linking a payload.

/// Why a payload could not be planned or linked. Every message names the
/// section, symbol or relocation at fault so an author can find it in
/// `readelf -a` output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The bytes are not a well-formed ELF file (truncated, bad offsets, ...).
    #[error("payload is not a well-formed ELF object: {0}")]
    Malformed(String),
    /// ELF, but not 64-bit little-endian.
    #[error("payload is not a 64-bit little-endian ELF object ({0})")]
    WrongClass(String),
    /// `e_type` is not `ET_REL`.
    #[error("payload is not a relocatable object: e_type is {0} ({name}), expected 1 (ET_REL)", name = elf_type_name(*.0))]
    NotRelocatable(u16),
    /// `e_machine` is not `EM_X86_64`.
    #[error("payload is for machine {0} (e_machine), expected 62 (EM_X86_64)")]
    WrongMachine(u16),
    /// A section that cannot be loaded into a patch region.
    #[error("section {section} cannot be loaded: {reason}")]
    UnsupportedSection { section: String, reason: String },
    /// A symbol that cannot be placed or resolved.
    #[error("symbol {symbol} is not supported: {reason}")]
    UnsupportedSymbol { symbol: String, reason: String },
    /// A relocation type this linker does not implement.
    #[error("unsupported relocation {kind} in section {section} at offset 0x{offset:x}")]
    UnsupportedRelocation { kind: String, section: String, offset: u64 },
    /// A relocation that is malformed (bad place, bad symbol index, ...).
    #[error("bad relocation in section {section} at offset 0x{offset:x}: {reason}")]
    BadRelocation { section: String, offset: u64, reason: String },
    /// A thread-local variable that cannot be linked as the payload accesses it.
    #[error("thread-local symbol {symbol}: {reason}")]
    TlsSymbol { symbol: String, reason: String },
    /// A non-weak undefined symbol the resolver does not know.
    #[error("undefined symbol {0}: not provided by the target process")]
    UndefinedSymbol(String),
    /// A PC-relative 32-bit relocation whose target is more than ±2 GiB away.
    #[error(
        "{relocation} against {symbol} at 0x{place:x} cannot reach 0x{target:x}: distance {distance} bytes does not fit in a signed 32-bit displacement",
        distance = signed_distance(*.place, *.target)
    )]
    OutOfRange { relocation: &'static str, symbol: String, place: u64, target: u64 },
    /// An absolute 32-bit relocation whose value does not fit its field.
    #[error("{relocation} against {symbol} at 0x{place:x}: value 0x{value:x} does not fit in a {field} field")]
    ValueOutOfRange { relocation: &'static str, symbol: String, place: u64, value: u64, field: &'static str },
    /// The laid-out region would exceed [`crate::MAX_REGION_SIZE`].
    #[error("patch region would be {size} bytes, more than the limit of {max} bytes")]
    RegionTooLarge { size: u64, max: u64 },
    /// The address given to [`crate::LinkPlan::link`] cannot hold the region.
    #[error("cannot link at 0x{base:x}: {reason}")]
    BadBase { base: u64, reason: String },
}

fn signed_distance(place: u64, target: u64) -> i128 {
    i128::from(target) - i128::from(place)
}

fn elf_type_name(e_type: u16) -> &'static str {
    match e_type {
        0 => "ET_NONE",
        1 => "ET_REL",
        2 => "ET_EXEC",
        3 => "ET_DYN",
        4 => "ET_CORE",
        _ => "unknown",
    }
}

impl From<object::read::Error> for LinkError {
    fn from(e: object::read::Error) -> Self {
        LinkError::Malformed(e.to_string())
    }
}
