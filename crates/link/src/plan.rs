//! [`LinkPlan`]: a checked, laid-out payload, and linking it at an address.

use crate::error::LinkError;
use crate::image::{LinkedImage, Prot};
use crate::input::{self, Def, Input};
use crate::layout::{self, Layout, PAGE, STUB_CODE};
use crate::reloc::{self, Overflow, RelocKind};
use crate::tls::{self, TlsSymbol};
use std::collections::{BTreeMap, BTreeSet};

/// Parsed and checked payload; computing sizes before an address is chosen.
#[derive(Debug, Clone)]
pub struct LinkPlan {
    input: Input,
    layout: Layout,
    header_reserve: u64,
}

impl LinkPlan {
    /// Parses the payload and lays it out, leaving `header_reserve` bytes
    /// (rounded up to a page) at the start for the engine's region header.
    pub fn new(payload: &[u8], header_reserve: u64) -> Result<LinkPlan, LinkError> {
        let input = input::read(payload)?;
        let layout = layout::plan(&input, header_reserve)?;
        tracing::debug!(
            sections = input.sections.len(),
            stubs = layout.stubs.len(),
            got = layout.got.len(),
            size = layout.size,
            "payload laid out"
        );
        Ok(LinkPlan { input, layout, header_reserve: layout::round_up(header_reserve, PAGE)? })
    }

    /// Total region size in bytes, a multiple of the page size.
    pub fn region_size(&self) -> u64 {
        self.layout.size
    }

    /// Bytes at the start of the region left for the engine (page-rounded).
    pub fn header_reserve(&self) -> u64 {
        self.header_reserve
    }

    /// The segments the linked image will have (same at every base).
    pub fn segments(&self) -> Vec<crate::Segment> {
        self.layout.segments.clone()
    }

    /// Names of undefined symbols the payload's relocations refer to by
    /// address (thread-local ones are in [`LinkPlan::tls_symbols`]), sorted,
    /// each once.
    pub fn undefined_symbols(&self) -> Vec<String> {
        let mut names = BTreeSet::new();
        for r in self.input.sections.iter().flat_map(|s| s.relocs.iter()).filter(|r| !r.kind.is_tls()) {
            if let Some(sym) = self.input.symbols.get(r.symbol) {
                if matches!(sym.def, Def::Undefined { .. }) {
                    names.insert(sym.name.clone());
                }
            }
        }
        names.into_iter().collect()
    }

    /// Names of the thread-local variables of the process the payload's TLS
    /// relocations refer to, sorted, each once.
    pub fn tls_symbols(&self) -> Vec<String> {
        let names: BTreeSet<String> = self
            .input
            .sections
            .iter()
            .flat_map(|s| s.relocs.iter())
            .filter(|r| r.kind.is_tls())
            .filter_map(|r| self.input.symbols.get(r.symbol).map(|s| s.name.clone()))
            .collect();
        names.into_iter().collect()
    }

    /// Names of the function symbols (global, weak or local) the payload
    /// defines, sorted, each once.
    pub fn defined_functions(&self) -> Vec<String> {
        let names: BTreeSet<String> = self
            .input
            .symbols
            .iter()
            .filter(|s| s.function && !s.anonymous && matches!(s.def, Def::Section { .. }))
            .map(|s| s.name.clone())
            .collect();
        names.into_iter().collect()
    }

    /// Links the payload to run at `base` (page aligned). `resolve` gives the
    /// address of an undefined symbol in the target process; it is asked once
    /// per name. A weak undefined symbol it does not know becomes 0. A payload
    /// using thread-local variables needs [`LinkPlan::link_with_tls`].
    pub fn link(&self, base: u64, resolve: &mut dyn FnMut(&str) -> Option<u64>) -> Result<LinkedImage, LinkError> {
        self.link_with_tls(base, resolve, &mut |_| Err("no thread-local variables are known to this link".into()))
    }

    /// [`LinkPlan::link`], with `resolve_tls` telling where each thread-local
    /// variable of the process the payload uses lives (asked once per name).
    pub fn link_with_tls(
        &self,
        base: u64,
        resolve: &mut dyn FnMut(&str) -> Option<u64>,
        resolve_tls: &mut dyn FnMut(&str) -> Result<TlsSymbol, String>,
    ) -> Result<LinkedImage, LinkError> {
        if base % PAGE != 0 {
            return Err(LinkError::BadBase { base, reason: format!("not aligned to the {PAGE}-byte page") });
        }
        if base.checked_add(self.layout.size).is_none() {
            return Err(LinkError::BadBase {
                base,
                reason: format!("a region of {} bytes would pass the end of the address space", self.layout.size),
            });
        }
        let size = usize::try_from(self.layout.size)
            .map_err(|_| LinkError::RegionTooLarge { size: self.layout.size, max: layout::MAX_REGION_SIZE })?;
        let mut image = Image { base, bytes: vec![0u8; size] };
        self.copy_sections(&mut image)?;

        let addresses = self.symbol_addresses(base, resolve)?;
        let addr = |i: usize| addresses.get(i).copied().unwrap_or(0);
        let tls = tls::resolve_all(&self.input, resolve_tls)?;

        for (&sym, &offset) in &self.layout.got {
            image.write(offset, &addr(sym).to_le_bytes(), "GOT entry")?;
        }
        self.write_tls_got(&mut image, &tls)?;

        let stubs_used = self.relocate(&mut image, &addresses, &tls)?;
        tracing::debug!(base = format_args!("0x{base:x}"), stubs_used, "payload linked");

        Ok(LinkedImage {
            base,
            bytes: image.bytes,
            segments: self.layout.segments.clone(),
            symbols: self.exported(&addresses),
            eh_frame: self.layout.eh_frame.map(|(start, end)| base.wrapping_add(start)..base.wrapping_add(end)),
        })
    }

    /// Applies every relocation of every loaded section; returns how many
    /// call stubs were needed.
    fn relocate(
        &self,
        image: &mut Image,
        addresses: &[u64],
        tls: &BTreeMap<usize, TlsSymbol>,
    ) -> Result<usize, LinkError> {
        let base = image.base;
        let addr = |i: usize| addresses.get(i).copied().unwrap_or(0);
        let mut stubs_used = BTreeSet::new();
        for (si, section) in self.input.sections.iter().enumerate() {
            let section_offset = self.layout.sections.get(si).copied().unwrap_or(0);
            for r in &section.relocs {
                let offset = section_offset.checked_add(r.offset).ok_or_else(|| too_far(&section.name, r.offset))?;
                let place = base.wrapping_add(offset);
                let symbol = self.input.symbols.get(r.symbol).map_or("#0", |s| s.name.as_str());
                let mut s = addr(r.symbol);
                if r.kind.is_tls() {
                    s = self.tls_value(r.kind, r.symbol, base, tls)?;
                }
                match r.kind {
                    RelocKind::GotPcRel(_) => {
                        let entry =
                            self.layout.got.get(&r.symbol).copied().ok_or_else(|| internal("GOT entry missing"))?;
                        s = base.wrapping_add(entry);
                    }
                    RelocKind::Plt32 => {
                        let direct = reloc::value(r.kind, s, r.addend, place);
                        let stub = self.layout.stubs.get(&r.symbol).copied();
                        if let (Err(_), Some(stub)) = (reloc::encode(r.kind, direct), stub) {
                            if stubs_used.insert(r.symbol) {
                                let mut code = [0u8; 14];
                                code[..6].copy_from_slice(&STUB_CODE);
                                code[6..].copy_from_slice(&s.to_le_bytes());
                                image.write(stub, &code, "call stub")?;
                            }
                            s = base.wrapping_add(stub);
                        }
                    }
                    _ => {}
                }
                let v = reloc::value(r.kind, s, r.addend, place);
                let (bytes, n) = reloc::encode(r.kind, v).map_err(|e| match e {
                    Overflow::Displacement => LinkError::OutOfRange {
                        relocation: r.kind.name(),
                        symbol: symbol.to_string(),
                        place,
                        target: s.wrapping_add_signed(r.addend),
                    },
                    Overflow::Value(field) => LinkError::ValueOutOfRange {
                        relocation: r.kind.name(),
                        symbol: symbol.to_string(),
                        place,
                        value: v as u64,
                        field,
                    },
                })?;
                image.write(offset, bytes.get(..n).unwrap_or(&[]), &section.name)?;
            }
        }
        Ok(stubs_used.len())
    }

    /// The GOT entries of thread-local variables: offsets from the thread
    /// pointer, and `tls_index` pairs for `__tls_get_addr`.
    fn write_tls_got(&self, image: &mut Image, tls: &BTreeMap<usize, TlsSymbol>) -> Result<(), LinkError> {
        let get = |sym: &usize| tls.get(sym).ok_or_else(|| internal("TLS symbol not resolved"));
        for (sym, &offset) in &self.layout.got_tpoff {
            let tp = get(sym)?.tp_offset.ok_or_else(|| internal("TLS offset missing"))?;
            image.write(offset, &tp.to_le_bytes(), "TLS GOT entry")?;
        }
        for (slots, local) in [(&self.layout.tls_gd, false), (&self.layout.tls_ld, true)] {
            for (sym, &offset) in slots {
                let t = get(sym)?;
                let mut pair = [0u8; 16];
                pair[..8].copy_from_slice(&t.module_id.to_le_bytes());
                pair[8..].copy_from_slice(&(if local { 0 } else { t.offset }).to_le_bytes());
                image.write(offset, &pair, "TLS index pair")?;
            }
        }
        Ok(())
    }

    /// The `S` of a TLS relocation: its GOT slot's address, or the offset itself.
    fn tls_value(
        &self,
        kind: RelocKind,
        sym: usize,
        base: u64,
        tls: &BTreeMap<usize, TlsSymbol>,
    ) -> Result<u64, LinkError> {
        let slot = |map: &BTreeMap<usize, u64>| {
            map.get(&sym).map(|&o| base.wrapping_add(o)).ok_or_else(|| internal("TLS GOT slot missing"))
        };
        let t = tls.get(&sym).ok_or_else(|| internal("TLS symbol not resolved"))?;
        match kind {
            RelocKind::GotTpOff => slot(&self.layout.got_tpoff),
            RelocKind::TlsGd => slot(&self.layout.tls_gd),
            RelocKind::TlsLd => slot(&self.layout.tls_ld),
            RelocKind::TpOff32 | RelocKind::TpOff64 => {
                t.tp_offset.map(|v| v as u64).ok_or_else(|| internal("TLS offset missing"))
            }
            _ => Ok(t.offset),
        }
    }

    fn copy_sections(&self, image: &mut Image) -> Result<(), LinkError> {
        // Padding in code traps (int3) rather than sliding into the next function.
        for seg in self.layout.segments.iter().filter(|s| s.prot == Prot::ReadExec) {
            let range = usize::try_from(seg.offset).ok().zip(usize::try_from(seg.offset + seg.len).ok());
            if let Some(slice) = range.and_then(|(a, b)| image.bytes.get_mut(a..b)) {
                slice.fill(0xcc);
            }
        }
        for (s, &offset) in self.input.sections.iter().zip(&self.layout.sections) {
            if let Some(data) = &s.data {
                image.write(offset, data, &s.name)?;
            }
        }
        Ok(())
    }

    /// The address of every symbol, indexed like the symbol table; undefined
    /// ones are resolved here, each name once.
    fn symbol_addresses(&self, base: u64, resolve: &mut dyn FnMut(&str) -> Option<u64>) -> Result<Vec<u64>, LinkError> {
        let mut referenced = vec![false; self.input.symbols.len()];
        // Thread-local variables are not resolved to addresses.
        for r in self.input.sections.iter().flat_map(|s| s.relocs.iter()).filter(|r| !r.kind.is_tls()) {
            if let Some(slot) = referenced.get_mut(r.symbol) {
                *slot = true;
            }
        }
        let mut known: BTreeMap<&str, Option<u64>> = BTreeMap::new();
        let mut out = Vec::with_capacity(self.input.symbols.len());
        for (i, sym) in self.input.symbols.iter().enumerate() {
            let a = match &sym.def {
                Def::Null | Def::Dropped { .. } => 0,
                Def::Absolute(v) => *v,
                Def::Section { section, offset } => {
                    let start = self.layout.sections.get(*section).copied().unwrap_or(0);
                    base.wrapping_add(start).wrapping_add(*offset)
                }
                Def::Common { .. } => base.wrapping_add(self.layout.common.get(&i).copied().unwrap_or(0)),
                Def::Undefined { weak } => {
                    if !referenced.get(i).copied().unwrap_or(false) {
                        0
                    } else {
                        let found = *known.entry(sym.name.as_str()).or_insert_with(|| resolve(&sym.name));
                        match (found, weak) {
                            (Some(a), _) => a,
                            (None, true) => 0,
                            (None, false) => {
                                return Err(LinkError::UndefinedSymbol(sym.name.clone()));
                            }
                        }
                    }
                }
            };
            out.push(a);
        }
        Ok(out)
    }

    fn exported(&self, addresses: &[u64]) -> BTreeMap<String, u64> {
        let mut map = BTreeMap::new();
        // Globals first so that they win over a local of the same name.
        for want_global in [true, false] {
            for (sym, &a) in self.input.symbols.iter().zip(addresses) {
                let defined_here = matches!(sym.def, Def::Section { .. } | Def::Common { .. });
                // `.L` names are assembler-local labels, not program symbols.
                let label = sym.name.starts_with(".L");
                if defined_here && !sym.anonymous && !label && sym.global == want_global {
                    map.entry(sym.name.clone()).or_insert(a);
                }
            }
        }
        map
    }
}

struct Image {
    base: u64,
    bytes: Vec<u8>,
}

impl Image {
    fn write(&mut self, offset: u64, data: &[u8], what: &str) -> Result<(), LinkError> {
        let start = usize::try_from(offset).ok();
        let dest = start
            .and_then(|s| s.checked_add(data.len()).map(|e| (s, e)))
            .and_then(|(s, e)| self.bytes.get_mut(s..e))
            .ok_or_else(|| {
                internal(&format!(
                    "{what}: write of {} bytes at offset 0x{offset:x} outside the region of base 0x{:x}",
                    data.len(),
                    self.base
                ))
            })?;
        dest.copy_from_slice(data);
        Ok(())
    }
}

fn too_far(section: &str, offset: u64) -> LinkError {
    LinkError::BadRelocation { section: section.to_string(), offset, reason: "place overflows the region".into() }
}

fn internal(what: &str) -> LinkError {
    LinkError::Malformed(format!("inconsistent layout: {what}"))
}
