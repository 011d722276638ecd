//! Thread-local variables of the target process referenced by a payload.
//!
//! A payload cannot define TLS (a running process cannot grow its TLS
//! blocks), but it may use the process's own thread-local variables, in any
//! of the x86_64 access models: general dynamic (`TLSGD`, a `tls_index` pair
//! handed to `__tls_get_addr`), local dynamic (`TLSLD` + `DTPOFF32`), initial
//! exec (`GOTTPOFF`, a GOT entry holding the offset from the thread pointer)
//! and local exec (`TPOFF32`). The engine tells the linker, per variable, its
//! module id and offset in that module's block, and (for a module in static
//! TLS) its offset from the thread pointer.

use crate::error::LinkError;
use crate::input::Input;
use crate::reloc::RelocKind;
use std::collections::BTreeMap;

/// Where a thread-local variable of the process lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsSymbol {
    /// The module id (`dtv` index) of the object defining it; 0 if not
    /// known (general and local dynamic access are then refused).
    pub module_id: u64,
    /// Its offset within that module's TLS block.
    pub offset: u64,
    /// Its offset from the thread pointer, the same in every thread, if its
    /// module is in static TLS (the executable, libraries loaded at start);
    /// `None` where only `__tls_get_addr` can find it.
    pub tp_offset: Option<i64>,
}

/// The TLS facts of every symbol the payload's TLS relocations name, asked
/// once per name; checks that the models used can be linked.
pub(crate) fn resolve_all(
    input: &Input,
    resolve: &mut dyn FnMut(&str) -> Result<TlsSymbol, String>,
) -> Result<BTreeMap<usize, TlsSymbol>, LinkError> {
    let mut by_name: BTreeMap<String, TlsSymbol> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut ld_modules = Vec::new();
    let mut dtpoff_modules = Vec::new();
    for r in input.sections.iter().flat_map(|s| s.relocs.iter()).filter(|r| r.kind.is_tls()) {
        let name = input.symbols.get(r.symbol).map_or("#0", |s| s.name.as_str());
        let tls = match by_name.get(name) {
            Some(t) => *t,
            None => {
                let t = resolve(name).map_err(|reason| LinkError::TlsSymbol { symbol: name.to_string(), reason })?;
                by_name.insert(name.to_string(), t);
                t
            }
        };
        if matches!(r.kind, RelocKind::GotTpOff | RelocKind::TpOff32 | RelocKind::TpOff64) && tls.tp_offset.is_none() {
            return Err(LinkError::TlsSymbol {
                symbol: name.to_string(),
                reason: format!(
                    "{} needs its offset from the thread pointer, but its module is not in static TLS \
                     (or that offset cannot be read from the process); build the payload with \
                     -ftls-model=global-dynamic",
                    r.kind.name()
                ),
            });
        }
        if matches!(r.kind, RelocKind::TlsGd | RelocKind::TlsLd) && tls.module_id == 0 {
            return Err(LinkError::TlsSymbol {
                symbol: name.to_string(),
                reason: format!(
                    "{} needs its module id, which is not known; build the payload with -ftls-model=initial-exec",
                    r.kind.name()
                ),
            });
        }
        match r.kind {
            RelocKind::TlsLd => ld_modules.push(tls.module_id),
            RelocKind::DtpOff32 | RelocKind::DtpOff64 => dtpoff_modules.push((name.to_string(), tls.module_id)),
            _ => {}
        }
        out.insert(r.symbol, tls);
    }
    // Local dynamic adds DTPOFF offsets to the block of the TLSLD module: all
    // must be the same module, as the compiler assumed.
    if let Some(&first) = ld_modules.first() {
        let other = dtpoff_modules.iter().find(|(_, m)| *m != first);
        if ld_modules.iter().any(|&m| m != first) || other.is_some() {
            let symbol = other.map_or_else(|| "(local dynamic)".to_string(), |(n, _)| n.clone());
            return Err(LinkError::TlsSymbol {
                symbol,
                reason: "local-dynamic TLS access spans variables of different modules".into(),
            });
        }
    }
    Ok(out)
}
