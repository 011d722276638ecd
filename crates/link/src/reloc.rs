//! The x86_64 relocation types this linker implements, and how each one
//! turns symbol, addend and place into the bytes written.

use object::elf;

/// A supported relocation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelocKind {
    /// `R_X86_64_NONE`: nothing to do.
    None,
    /// `R_X86_64_64`: S + A, 8 bytes.
    Abs64,
    /// `R_X86_64_PC64`: S + A - P, 8 bytes.
    Pc64,
    /// `R_X86_64_PC32`: S + A - P, signed 32 bits.
    Pc32,
    /// `R_X86_64_PLT32`: like PC32, but a far target goes through a stub.
    Plt32,
    /// `R_X86_64_GOTPCREL` and its relaxable variants: GOT entry + A - P.
    GotPcRel(u32),
    /// `R_X86_64_32`: S + A, unsigned 32 bits.
    Abs32,
    /// `R_X86_64_32S`: S + A, signed 32 bits.
    Abs32S,
    /// `R_X86_64_GOTTPOFF` (initial exec): GOT entry holding the variable's
    /// offset from the thread pointer, + A - P.
    GotTpOff,
    /// `R_X86_64_TPOFF32` (local exec): offset from the thread pointer + A, signed 32 bits.
    TpOff32,
    /// `R_X86_64_TPOFF64`: offset from the thread pointer + A, 8 bytes.
    TpOff64,
    /// `R_X86_64_TLSGD` (general dynamic): GOT pair {module id, offset} + A - P,
    /// handed to `__tls_get_addr`.
    TlsGd,
    /// `R_X86_64_TLSLD` (local dynamic): GOT pair {module id, 0} + A - P.
    TlsLd,
    /// `R_X86_64_DTPOFF32`: offset in the module's TLS block + A, signed 32 bits.
    DtpOff32,
    /// `R_X86_64_DTPOFF64`: offset in the module's TLS block + A, 8 bytes.
    DtpOff64,
}

impl RelocKind {
    /// The supported kind for an ELF `r_type`, if any.
    pub(crate) fn from_elf(r_type: u32) -> Option<RelocKind> {
        Some(match r_type {
            elf::R_X86_64_NONE => RelocKind::None,
            elf::R_X86_64_64 => RelocKind::Abs64,
            elf::R_X86_64_PC64 => RelocKind::Pc64,
            elf::R_X86_64_PC32 => RelocKind::Pc32,
            elf::R_X86_64_PLT32 => RelocKind::Plt32,
            elf::R_X86_64_GOTPCREL | elf::R_X86_64_GOTPCRELX | elf::R_X86_64_REX_GOTPCRELX => {
                RelocKind::GotPcRel(r_type)
            }
            elf::R_X86_64_32 => RelocKind::Abs32,
            elf::R_X86_64_32S => RelocKind::Abs32S,
            elf::R_X86_64_GOTTPOFF => RelocKind::GotTpOff,
            elf::R_X86_64_TPOFF32 => RelocKind::TpOff32,
            elf::R_X86_64_TPOFF64 => RelocKind::TpOff64,
            elf::R_X86_64_TLSGD => RelocKind::TlsGd,
            elf::R_X86_64_TLSLD => RelocKind::TlsLd,
            elf::R_X86_64_DTPOFF32 => RelocKind::DtpOff32,
            elf::R_X86_64_DTPOFF64 => RelocKind::DtpOff64,
            _ => return None,
        })
    }

    /// Whether the relocation refers to a thread-local variable (its symbol
    /// is resolved to a module id and offsets, not to an address).
    pub(crate) fn is_tls(self) -> bool {
        matches!(
            self,
            RelocKind::GotTpOff
                | RelocKind::TpOff32
                | RelocKind::TpOff64
                | RelocKind::TlsGd
                | RelocKind::TlsLd
                | RelocKind::DtpOff32
                | RelocKind::DtpOff64
        )
    }

    /// Bytes written at the place.
    pub(crate) fn width(self) -> u64 {
        match self {
            RelocKind::None => 0,
            RelocKind::Abs64 | RelocKind::Pc64 | RelocKind::TpOff64 | RelocKind::DtpOff64 => 8,
            RelocKind::Pc32
            | RelocKind::Plt32
            | RelocKind::GotPcRel(_)
            | RelocKind::Abs32
            | RelocKind::Abs32S
            | RelocKind::GotTpOff
            | RelocKind::TpOff32
            | RelocKind::TlsGd
            | RelocKind::TlsLd
            | RelocKind::DtpOff32 => 4,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            RelocKind::None => "R_X86_64_NONE",
            RelocKind::Abs64 => "R_X86_64_64",
            RelocKind::Pc64 => "R_X86_64_PC64",
            RelocKind::Pc32 => "R_X86_64_PC32",
            RelocKind::Plt32 => "R_X86_64_PLT32",
            RelocKind::GotPcRel(t) => type_name(t),
            RelocKind::Abs32 => "R_X86_64_32",
            RelocKind::Abs32S => "R_X86_64_32S",
            RelocKind::GotTpOff => "R_X86_64_GOTTPOFF",
            RelocKind::TpOff32 => "R_X86_64_TPOFF32",
            RelocKind::TpOff64 => "R_X86_64_TPOFF64",
            RelocKind::TlsGd => "R_X86_64_TLSGD",
            RelocKind::TlsLd => "R_X86_64_TLSLD",
            RelocKind::DtpOff32 => "R_X86_64_DTPOFF32",
            RelocKind::DtpOff64 => "R_X86_64_DTPOFF64",
        }
    }
}

/// The ABI name of an x86_64 relocation type, for error messages.
pub(crate) fn type_name(r_type: u32) -> &'static str {
    const NAMES: [&str; 43] = [
        "R_X86_64_NONE",
        "R_X86_64_64",
        "R_X86_64_PC32",
        "R_X86_64_GOT32",
        "R_X86_64_PLT32",
        "R_X86_64_COPY",
        "R_X86_64_GLOB_DAT",
        "R_X86_64_JUMP_SLOT",
        "R_X86_64_RELATIVE",
        "R_X86_64_GOTPCREL",
        "R_X86_64_32",
        "R_X86_64_32S",
        "R_X86_64_16",
        "R_X86_64_PC16",
        "R_X86_64_8",
        "R_X86_64_PC8",
        "R_X86_64_DTPMOD64",
        "R_X86_64_DTPOFF64",
        "R_X86_64_TPOFF64",
        "R_X86_64_TLSGD",
        "R_X86_64_TLSLD",
        "R_X86_64_DTPOFF32",
        "R_X86_64_GOTTPOFF",
        "R_X86_64_TPOFF32",
        "R_X86_64_PC64",
        "R_X86_64_GOTOFF64",
        "R_X86_64_GOTPC32",
        "R_X86_64_GOT64",
        "R_X86_64_GOTPCREL64",
        "R_X86_64_GOTPC64",
        "R_X86_64_GOTPLT64",
        "R_X86_64_PLTOFF64",
        "R_X86_64_SIZE32",
        "R_X86_64_SIZE64",
        "R_X86_64_GOTPC32_TLSDESC",
        "R_X86_64_TLSDESC_CALL",
        "R_X86_64_TLSDESC",
        "R_X86_64_IRELATIVE",
        "R_X86_64_RELATIVE64",
        "unassigned (39)",
        "unassigned (40)",
        "R_X86_64_GOTPCRELX",
        "R_X86_64_REX_GOTPCRELX",
    ];
    usize::try_from(r_type).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("unknown")
}

/// Why a relocation type is not implemented, where there is more to say
/// than its name.
pub(crate) fn refusal_reason(r_type: u32) -> Option<&'static str> {
    match r_type {
        elf::R_X86_64_GOTPC32_TLSDESC | elf::R_X86_64_TLSDESC_CALL | elf::R_X86_64_TLSDESC => {
            Some("TLS descriptors (-mtls-dialect=gnu2) are not supported; build the payload with -mtls-dialect=gnu")
        }
        elf::R_X86_64_DTPMOD64 => Some("a module id in data cannot be linked into a patch region"),
        _ => None,
    }
}

/// What a relocation evaluates to, before it is checked against its field.
/// For the TLS offsets (`TPOFF*`, `DTPOFF*`) `s` is the offset, taken as a
/// signed 64-bit value (offsets from the thread pointer are negative).
pub(crate) fn value(kind: RelocKind, s: u64, a: i64, p: u64) -> i128 {
    let (a, p) = (i128::from(a), i128::from(p));
    let signed = i128::from(s as i64);
    let s = i128::from(s);
    match kind {
        RelocKind::None => 0,
        RelocKind::Abs64 | RelocKind::Abs32 | RelocKind::Abs32S => s + a,
        RelocKind::Pc64
        | RelocKind::Pc32
        | RelocKind::Plt32
        | RelocKind::GotPcRel(_)
        | RelocKind::GotTpOff
        | RelocKind::TlsGd
        | RelocKind::TlsLd => s + a - p,
        RelocKind::TpOff32 | RelocKind::TpOff64 | RelocKind::DtpOff32 | RelocKind::DtpOff64 => signed + a,
    }
}

/// Why a value does not fit its field.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// A PC-relative 32-bit field.
    Displacement,
    /// An absolute 32-bit field, named.
    Value(&'static str),
}

/// The little-endian bytes for `v` in the field of `kind` (1..=8 bytes used).
pub(crate) fn encode(kind: RelocKind, v: i128) -> Result<([u8; 8], usize), Overflow> {
    match kind {
        RelocKind::None => Ok(([0; 8], 0)),
        // 64-bit fields wrap, as they do in every linker: S + A is taken mod 2^64.
        RelocKind::Abs64 | RelocKind::Pc64 | RelocKind::TpOff64 | RelocKind::DtpOff64 => {
            Ok(((v as u64).to_le_bytes(), 8))
        }
        RelocKind::Pc32
        | RelocKind::Plt32
        | RelocKind::GotPcRel(_)
        | RelocKind::GotTpOff
        | RelocKind::TlsGd
        | RelocKind::TlsLd => {
            let d = i32::try_from(v).map_err(|_| Overflow::Displacement)?;
            Ok((widen(d.to_le_bytes()), 4))
        }
        RelocKind::Abs32 => {
            let d = u32::try_from(v).map_err(|_| Overflow::Value("unsigned 32-bit"))?;
            Ok((widen(d.to_le_bytes()), 4))
        }
        RelocKind::Abs32S | RelocKind::TpOff32 | RelocKind::DtpOff32 => {
            let d = i32::try_from(v).map_err(|_| Overflow::Value("signed 32-bit"))?;
            Ok((widen(d.to_le_bytes()), 4))
        }
    }
}

fn widen(b: [u8; 4]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_abi_numbers() {
        assert_eq!(type_name(elf::R_X86_64_TLSGD), "R_X86_64_TLSGD");
        assert_eq!(type_name(elf::R_X86_64_GOTOFF64), "R_X86_64_GOTOFF64");
        assert_eq!(type_name(elf::R_X86_64_REX_GOTPCRELX), "R_X86_64_REX_GOTPCRELX");
        assert_eq!(type_name(elf::R_X86_64_SIZE64), "R_X86_64_SIZE64");
        assert_eq!(type_name(9999), "unknown");
    }

    #[test]
    fn pc32_range_is_checked_at_both_ends() {
        let k = RelocKind::Pc32;
        assert!(encode(k, value(k, 0x1000 + i32::MAX as u64, 0, 0x1000)).is_ok());
        assert_eq!(encode(k, value(k, 0x1000 + i32::MAX as u64 + 1, 0, 0x1000)), Err(Overflow::Displacement));
        assert!(encode(k, value(k, 0x1000_0000, 0, 0x1000_0000 + 0x8000_0000)).is_ok());
        assert_eq!(encode(k, value(k, 0x1000_0000, -1, 0x1000_0000 + 0x8000_0000)), Err(Overflow::Displacement));
    }

    #[test]
    fn absolute_32_fields_differ_in_signedness() {
        assert!(encode(RelocKind::Abs32, 0xffff_ffff).is_ok());
        assert!(encode(RelocKind::Abs32S, 0xffff_ffff).is_err());
        assert!(encode(RelocKind::Abs32S, -1).is_ok());
        assert!(encode(RelocKind::Abs32, -1).is_err());
    }

    #[test]
    fn thread_pointer_offsets_are_signed() {
        let k = RelocKind::TpOff32;
        let (b, n) = encode(k, value(k, (-16i64) as u64, 4, 0)).unwrap();
        assert_eq!((i32::from_le_bytes([b[0], b[1], b[2], b[3]]), n), (-12, 4));
        assert!(encode(k, value(k, (-(1i64 << 40)) as u64, 0, 0)).is_err());
        let k = RelocKind::TpOff64;
        let (b, _) = encode(k, value(k, (-16i64) as u64, 0, 0)).unwrap();
        assert_eq!(i64::from_le_bytes(b), -16);
        assert!(RelocKind::from_elf(elf::R_X86_64_GOTTPOFF).is_some_and(RelocKind::is_tls));
        assert!(refusal_reason(elf::R_X86_64_TLSDESC_CALL).is_some_and(|r| r.contains("gnu2")));
    }

    #[test]
    fn sixty_four_bit_fields_wrap() {
        let k = RelocKind::Abs64;
        let (b, n) = encode(k, value(k, u64::MAX, 2, 0)).unwrap();
        assert_eq!((u64::from_le_bytes(b), n), (1, 8));
    }
}
