//! The argument registers a function's code reads before writing them: a
//! signature seen from the code, for objects built without `-g` (no DWARF
//! to read the signature from). A fix that makes a function read an
//! argument register its original never read gave it a parameter, which
//! callers left running do not pass.
//!
//! The scan is linear (instructions in address order, not paths), so a
//! register written in one branch and read in another may be missed: it
//! can miss a change, never invent one from unchanged code.

use iced_x86::{Decoder, DecoderOptions, Instruction, InstructionInfoFactory, OpAccess, Register};

/// Integer then vector argument registers of the x86-64 System V ABI.
const ARGUMENTS: [Register; 14] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
    Register::XMM0,
    Register::XMM1,
    Register::XMM2,
    Register::XMM3,
    Register::XMM4,
    Register::XMM5,
    Register::XMM6,
    Register::XMM7,
];

/// Bit `i` set: argument register `ARGUMENTS[i]` is read before any write.
pub fn read_at_entry(code: &[u8]) -> u16 {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    let mut insn = Instruction::default();
    let (mut read, mut written) = (0u16, 0u16);
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            break;
        }
        let info = factory.info(&insn);
        for used in info.used_registers() {
            let Some(bit) = argument_bit(used.register()) else { continue };
            let reads = matches!(
                used.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            );
            if reads && written & bit == 0 && !zeroing_idiom(&insn) {
                read |= bit;
            }
        }
        for used in info.used_registers() {
            let Some(bit) = argument_bit(used.register()) else { continue };
            // A 32-bit write clears the upper half: the whole register is new.
            if matches!(used.access(), OpAccess::Write | OpAccess::ReadWrite) {
                written |= bit;
            }
        }
    }
    read
}

fn argument_bit(register: Register) -> Option<u16> {
    let full = if register.is_xmm() || register.is_ymm() || register.is_zmm() {
        Register::XMM0 + (register.number() as u32)
    } else {
        register.full_register()
    };
    ARGUMENTS.iter().position(|r| *r == full).map(|i| 1 << i)
}

/// `xor %edx,%edx` and the like read nothing: they only clear.
fn zeroing_idiom(insn: &Instruction) -> bool {
    use iced_x86::Mnemonic::*;
    matches!(insn.mnemonic(), Xor | Sub | Pxor | Xorps | Xorpd | Vpxor | Vxorps | Vxorpd)
        && insn.op_count() >= 2
        && insn.op0_kind() == iced_x86::OpKind::Register
        && insn.op1_kind() == iced_x86::OpKind::Register
        && insn.op0_register() == insn.op1_register()
        && (insn.op_count() == 2 || insn.op2_register() == insn.op1_register())
}

/// Names of the registers set in `bits`, for messages.
pub fn names(bits: u16) -> Vec<String> {
    ARGUMENTS
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, r)| format!("%{:?}", r).to_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_before_writes_are_arguments() {
        // mov %esi,%eax; add %edi,%eax; ret
        assert_eq!(names(read_at_entry(&[0x89, 0xf0, 0x01, 0xf8, 0xc3])), ["%rdi", "%rsi"]);
        // xor %edx,%edx; mov %edx,%eax; ret: rdx is cleared, not read
        assert_eq!(read_at_entry(&[0x31, 0xd2, 0x89, 0xd0, 0xc3]), 0);
        // mov $1,%ecx; add %ecx,%edi; mov %edi,%eax; ret
        assert_eq!(names(read_at_entry(&[0xb9, 1, 0, 0, 0, 0x01, 0xcf, 0x89, 0xf8, 0xc3])), ["%rdi"]);
        // addsd %xmm1,%xmm0; ret
        assert_eq!(names(read_at_entry(&[0xf2, 0x0f, 0x58, 0xc1, 0xc3])), ["%xmm0", "%xmm1"]);
    }
}
