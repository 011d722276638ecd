//! The unwind tables of the functions that go into the payload: the
//! fixed object's `.eh_frame` cut down to the FDEs of the copied functions,
//! each after the CIE it refers to. With them the engine can unwind a thread
//! stopped inside replacement code (a rollback or a higher level while it
//! runs) instead of scanning its stack conservatively.
//!
//! Written here rather than with gimli's writer: the records are copied as
//! they are, only the CIE pointers change and the relocations move with
//! their bytes, which needs no understanding of the CFA programs.

use crate::objfile::Reloc;

/// One kept record's bytes and the relocations inside it, at their offsets
/// in the new table.
pub struct UnwindTable<'a> {
    pub bytes: Vec<u8>,
    pub relocs: Vec<(u64, &'a Reloc)>,
}

struct Record {
    start: usize,
    end: usize,
    /// `Some(cie_start)` for an FDE.
    cie: Option<usize>,
}

/// The records of an `.eh_frame`; `None` when it is malformed or uses the
/// 64-bit format (nothing is kept then: the stack check stays conservative).
fn records(data: &[u8]) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 4 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().ok()?);
        if len == 0 {
            break;
        }
        if len == u32::MAX || len < 4 {
            return None;
        }
        let end = at.checked_add(4)?.checked_add(len as usize)?;
        if end > data.len() {
            return None;
        }
        let id = u32::from_le_bytes(data[at + 4..at + 8].try_into().ok()?);
        let cie = match id {
            0 => None,
            back => Some((at + 4).checked_sub(back as usize)?),
        };
        out.push(Record { start: at, end, cie });
        at = end;
    }
    Some(out)
}

/// The FDEs whose function start (`keep` decides, from the relocation of
/// its first address field) is in the payload, each with its CIE.
pub fn cut<'a>(data: &[u8], relocs: &'a [Reloc], keep: impl Fn(&Reloc) -> bool) -> Option<UnwindTable<'a>> {
    let records = records(data)?;
    let inside = |r: &Record| {
        let (start, end) = (r.start, r.end);
        relocs.iter().filter(move |x| (x.offset as usize) >= start && (x.offset as usize) < end)
    };
    let mut table = UnwindTable { bytes: Vec::new(), relocs: Vec::new() };
    let mut placed_cies: Vec<(usize, usize)> = Vec::new();
    for fde in records.iter().filter(|r| r.cie.is_some()) {
        let pc_begin = inside(fde).find(|r| r.offset as usize == fde.start + 8);
        if !pc_begin.is_some_and(&keep) {
            continue;
        }
        let cie_start = fde.cie?;
        let cie = records.iter().find(|r| r.start == cie_start && r.cie.is_none())?;
        let cie_at = match placed_cies.iter().find(|(from, _)| *from == cie_start) {
            Some(&(_, to)) => to,
            None => {
                let to = copy(&mut table, data, cie, inside(cie));
                placed_cies.push((cie_start, to));
                to
            }
        };
        let fde_at = copy(&mut table, data, fde, inside(fde));
        let pointer = u32::try_from(fde_at + 4 - cie_at).ok()?;
        table.bytes[fde_at + 4..fde_at + 8].copy_from_slice(&pointer.to_le_bytes());
    }
    Some(table)
}

fn copy<'a>(
    table: &mut UnwindTable<'a>,
    data: &[u8],
    record: &Record,
    relocs: impl Iterator<Item = &'a Reloc>,
) -> usize {
    let at = table.bytes.len();
    table.bytes.extend_from_slice(&data[record.start..record.end]);
    for r in relocs {
        table.relocs.push(((at + r.offset as usize - record.start) as u64, r));
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CIE (len 16) then two FDEs (len 20 each) pointing back to it.
    fn table() -> (Vec<u8>, Vec<Reloc>) {
        let mut data = Vec::new();
        data.extend_from_slice(&16u32.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&[1, b'z', b'R', 0, 1, 0x78, 16, 1, 0x1b, 0, 0, 0]);
        for n in 0..2u32 {
            let at = data.len() as u32;
            data.extend_from_slice(&20u32.to_le_bytes());
            data.extend_from_slice(&(at + 4).to_le_bytes());
            data.extend_from_slice(&[0; 4]);
            data.extend_from_slice(&(0x10 + n).to_le_bytes());
            data.extend_from_slice(&[0; 8]);
        }
        let reloc = |offset, symbol| Reloc { offset, r_type: object::elf::R_X86_64_PC32, symbol, addend: 0, tail: 0 };
        (data, vec![reloc(28, 7), reloc(52, 9)])
    }

    #[test]
    fn keeps_the_chosen_functions_fdes_after_their_cie() {
        let (data, relocs) = table();
        let cut = cut(&data, &relocs, |r| r.symbol == 9).expect("well formed");
        assert_eq!(cut.bytes.len(), 20 + 24);
        assert_eq!(&cut.bytes[..20], &data[..20], "the CIE as it was");
        assert_eq!(&cut.bytes[24..28], &24u32.to_le_bytes(), "the FDE points back to the CIE copy");
        assert_eq!(&cut.bytes[32..36], &0x11u32.to_le_bytes(), "the second FDE's own bytes");
        assert_eq!(cut.relocs.len(), 1);
        assert_eq!((cut.relocs[0].0, cut.relocs[0].1.symbol), (28, 9));
    }

    #[test]
    fn nothing_kept_is_an_empty_table_and_garbage_is_none() {
        let (data, relocs) = table();
        assert!(cut(&data, &relocs, |_| false).expect("well formed").bytes.is_empty());
        assert!(cut(&data[..30], &relocs, |_| true).is_none());
        let mut wide = data.clone();
        wide[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(cut(&wide, &relocs, |_| true).is_none());
    }
}
