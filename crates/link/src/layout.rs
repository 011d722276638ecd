//! Placing sections, call stubs, GOT entries and common symbols in the
//! region, before its address is known. The layout fixes the region size,
//! so everything that might be needed at link time (a stub for every
//! undefined call target, whether or not it turns out to be far) is
//! reserved here.

use crate::error::LinkError;
use crate::image::{Prot, Segment};
use crate::input::{Def, Input, Part};
use crate::reloc::RelocKind;
use std::collections::BTreeMap;

pub const PAGE: u64 = 4096;

/// Upper bound on a region: keeps every internal PC-relative reference in
/// range and bounds the memory an untrusted payload can make us allocate.
pub const MAX_REGION_SIZE: u64 = 256 << 20;

/// `jmp *0(%rip)` followed by the 8-byte destination.
pub(crate) const STUB_CODE: [u8; 6] = [0xff, 0x25, 0, 0, 0, 0];
/// A stub is 14 bytes; slots are 16 so that each starts aligned.
pub(crate) const STUB_SLOT: u64 = 16;
pub(crate) const GOT_ENTRY: u64 = 8;

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Offset of each loaded section, indexed like `Input::sections`.
    pub sections: Vec<u64>,
    /// Symbol index -> offset of its call stub.
    pub stubs: BTreeMap<usize, u64>,
    /// Symbol index -> offset of its GOT entry.
    pub got: BTreeMap<usize, u64>,
    /// Thread-local symbol index -> offset of its GOT entry holding its
    /// offset from the thread pointer (`R_X86_64_GOTTPOFF`).
    pub got_tpoff: BTreeMap<usize, u64>,
    /// Thread-local symbol index -> offset of its `tls_index` pair
    /// {module id, offset} for `__tls_get_addr` (`R_X86_64_TLSGD`).
    pub tls_gd: BTreeMap<usize, u64>,
    /// Thread-local symbol index -> offset of its pair {module id, 0} (`R_X86_64_TLSLD`).
    pub tls_ld: BTreeMap<usize, u64>,
    /// Symbol index -> offset of its common block.
    pub common: BTreeMap<usize, u64>,
    /// Offsets of the unwind tables, `[start, end)`, if any; a 4-byte zero
    /// terminator follows `end`.
    pub eh_frame: Option<(u64, u64)>,
    pub segments: Vec<Segment>,
    pub size: u64,
}

struct Cursor(u64);

impl Cursor {
    fn align(&mut self, to: u64) -> Result<u64, LinkError> {
        self.0 = round_up(self.0, to)?;
        Ok(self.0)
    }

    fn take(&mut self, len: u64) -> Result<u64, LinkError> {
        let at = self.0;
        self.0 = checked(at.checked_add(len))?;
        Ok(at)
    }
}

fn checked(v: Option<u64>) -> Result<u64, LinkError> {
    match v {
        Some(v) if v <= MAX_REGION_SIZE => Ok(v),
        _ => Err(LinkError::RegionTooLarge { size: v.unwrap_or(u64::MAX), max: MAX_REGION_SIZE }),
    }
}

pub(crate) fn round_up(v: u64, to: u64) -> Result<u64, LinkError> {
    checked(v.checked_next_multiple_of(to))
}

pub(crate) fn plan(input: &Input, header_reserve: u64) -> Result<Layout, LinkError> {
    let mut sections = vec![0u64; input.sections.len()];
    let mut stubs = BTreeMap::new();
    let mut got = BTreeMap::new();
    let mut common = BTreeMap::new();
    let mut segments = Vec::new();
    let mut cur = Cursor(round_up(header_reserve, PAGE)?);

    let (stub_syms, got_syms) = referenced(input);
    let tls = tls_referenced(input);

    // Text: code, then stubs.
    let start = cur.0;
    place(input, Part::Text, &mut sections, &mut cur)?;
    if !stub_syms.is_empty() {
        cur.align(STUB_SLOT)?;
        for s in stub_syms {
            stubs.insert(s, cur.take(STUB_SLOT)?);
        }
    }
    close(start, &mut cur, Prot::ReadExec, &mut segments)?;

    // Read-only: rodata and RELRO data, unwind tables, then the GOT.
    let start = cur.0;
    place(input, Part::ReadOnly, &mut sections, &mut cur)?;
    let eh_frame = place_unwind(input, &mut sections, &mut cur)?;
    if !got_syms.is_empty() {
        cur.align(GOT_ENTRY)?;
        for s in got_syms {
            got.insert(s, cur.take(GOT_ENTRY)?);
        }
    }
    let (got_tpoff, tls_gd, tls_ld) = place_tls(&tls, &mut cur)?;
    close(start, &mut cur, Prot::Read, &mut segments)?;

    // Read-write: data, then bss, then common symbols.
    let start = cur.0;
    place(input, Part::ReadWrite, &mut sections, &mut cur)?;
    for (i, sym) in input.symbols.iter().enumerate() {
        if let Def::Common { size, align } = sym.def {
            cur.align(align)?;
            common.insert(i, cur.take(size)?);
        }
    }
    close(start, &mut cur, Prot::ReadWrite, &mut segments)?;

    Ok(Layout { sections, stubs, got, got_tpoff, tls_gd, tls_ld, common, eh_frame, segments, size: cur.0 })
}

/// Thread-local symbols by the GOT slot kind they need.
#[derive(Default)]
struct TlsRefs {
    tpoff: std::collections::BTreeSet<usize>,
    gd: std::collections::BTreeSet<usize>,
    ld: std::collections::BTreeSet<usize>,
}

fn tls_referenced(input: &Input) -> TlsRefs {
    let mut refs = TlsRefs::default();
    for r in input.sections.iter().flat_map(|s| s.relocs.iter()) {
        match r.kind {
            RelocKind::GotTpOff => refs.tpoff.insert(r.symbol),
            RelocKind::TlsGd => refs.gd.insert(r.symbol),
            RelocKind::TlsLd => refs.ld.insert(r.symbol),
            _ => false,
        };
    }
    refs
}

type TlsSlots = (BTreeMap<usize, u64>, BTreeMap<usize, u64>, BTreeMap<usize, u64>);

/// GOT entries for thread-local access, after the ordinary GOT: 8 bytes per
/// initial-exec symbol, a 16-byte `tls_index` pair per dynamic-model one.
fn place_tls(tls: &TlsRefs, cur: &mut Cursor) -> Result<TlsSlots, LinkError> {
    let mut tpoff = BTreeMap::new();
    let (mut gd, mut ld) = (BTreeMap::new(), BTreeMap::new());
    if !tls.tpoff.is_empty() {
        cur.align(GOT_ENTRY)?;
        for &s in &tls.tpoff {
            tpoff.insert(s, cur.take(GOT_ENTRY)?);
        }
    }
    for (set, slots) in [(&tls.gd, &mut gd), (&tls.ld, &mut ld)] {
        for &s in set {
            cur.align(2 * GOT_ENTRY)?;
            slots.insert(s, cur.take(2 * GOT_ENTRY)?);
        }
    }
    Ok((tpoff, gd, ld))
}

/// Symbols that need a stub slot (calls to targets outside the region) and
/// a GOT entry, in symbol index order.
fn referenced(input: &Input) -> (Vec<usize>, Vec<usize>) {
    let mut stub = std::collections::BTreeSet::new();
    let mut got = std::collections::BTreeSet::new();
    for r in input.sections.iter().flat_map(|s| s.relocs.iter()) {
        match r.kind {
            RelocKind::Plt32 => {
                let outside = input
                    .symbols
                    .get(r.symbol)
                    .is_some_and(|s| !matches!(s.def, Def::Section { .. } | Def::Common { .. }));
                if outside {
                    stub.insert(r.symbol);
                }
            }
            RelocKind::GotPcRel(_) => {
                got.insert(r.symbol);
            }
            _ => {}
        }
    }
    (stub.into_iter().collect(), got.into_iter().collect())
}

fn place(input: &Input, part: Part, offsets: &mut [u64], cur: &mut Cursor) -> Result<(), LinkError> {
    // Contents first, then zero-fill, so bss does not sit between data.
    for want_data in [true, false] {
        for (i, s) in input.sections.iter().enumerate() {
            if s.part == part && s.data.is_some() == want_data && !s.unwind {
                cur.align(s.align)?;
                if let Some(slot) = offsets.get_mut(i) {
                    *slot = cur.take(s.size)?;
                }
            }
        }
    }
    Ok(())
}

/// `.eh_frame` sections back to back (a list of CIEs and FDEs may be
/// concatenated), then the zero-length entry that ends the list, so the
/// engine can hand the whole thing to an unwinder.
fn place_unwind(input: &Input, offsets: &mut [u64], cur: &mut Cursor) -> Result<Option<(u64, u64)>, LinkError> {
    let mut range: Option<(u64, u64)> = None;
    for (i, s) in input.sections.iter().enumerate().filter(|(_, s)| s.unwind) {
        // Padding between tables would be read as an entry, so they must abut.
        let at = match range {
            Some((_, end)) if end % s.align == 0 => end,
            Some(_) => {
                return Err(LinkError::UnsupportedSection {
                    section: s.name.clone(),
                    reason: format!(
                        "a second unwind table cannot be placed right after the first at alignment {}",
                        s.align
                    ),
                });
            }
            None => cur.align(s.align.max(4))?,
        };
        cur.0 = at;
        let placed = cur.take(s.size)?;
        if let Some(slot) = offsets.get_mut(i) {
            *slot = placed;
        }
        range = Some((range.map_or(placed, |(start, _)| start), cur.0));
    }
    if range.is_some() {
        cur.take(4)?;
    }
    Ok(range)
}

fn close(start: u64, cur: &mut Cursor, prot: Prot, segments: &mut Vec<Segment>) -> Result<(), LinkError> {
    let end = cur.align(PAGE)?;
    if end > start {
        segments.push(Segment { offset: start, len: end - start, prot });
    }
    Ok(())
}
