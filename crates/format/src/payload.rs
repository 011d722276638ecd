//! The payload must be a relocatable ELF object for the target's machine; the
//! linker does the deep checks, this one catches the wrong file early.

use crate::FormatError;
use crate::manifest::Machine;
use object::read::elf::FileHeader;

/// Checks the payload is a 64-bit little-endian `ET_REL` object for `machine`.
pub fn check_payload(payload: &[u8], machine: Machine) -> Result<(), FormatError> {
    let bad = |m: String| FormatError::Payload(m);
    if payload.len() < 4 || &payload[..4] != b"\x7fELF" {
        return Err(bad("not an ELF file (missing \\x7fELF magic)".into()));
    }
    let header = object::elf::FileHeader64::<object::Endianness>::parse(payload)
        .map_err(|e| bad(format!("not a 64-bit ELF object: {e}")))?;
    let endian = header.endian().map_err(|e| bad(format!("unsupported ELF encoding: {e}")))?;
    if endian != object::Endianness::Little {
        return Err(bad("big-endian ELF objects are not supported".into()));
    }
    let e_type = header.e_type(endian);
    if e_type != object::elf::ET_REL {
        let kind = match e_type {
            object::elf::ET_EXEC => "an executable",
            object::elf::ET_DYN => "a shared object or PIE executable",
            object::elf::ET_CORE => "a core dump",
            _ => "not a relocatable object",
        };
        return Err(bad(format!("ELF type {e_type} is {kind}; a relocatable object (.o, ET_REL) is required")));
    }
    let e_machine = header.e_machine(endian);
    if e_machine != machine.elf_machine() {
        let found =
            Machine::from_elf(e_machine).map(|m| m.to_string()).unwrap_or_else(|| format!("e_machine {e_machine}"));
        return Err(bad(format!("object is for {found}, the target is {machine}")));
    }
    header.sections(endian, payload).map_err(|e| bad(format!("section headers are malformed: {e}")))?;
    Ok(())
}
