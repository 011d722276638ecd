//! The payload linker on hostile ELF: LinkPlan::new (section table, symbol
//! table, relocations of an ET_REL) and linking at two bases, one near the
//! symbols the payload imports and one far from them (call stubs, GOT), must
//! never panic, and what links keeps the region's invariants.

#![no_main]

use hotpatch_link::{LinkPlan, Prot, TlsSymbol};
use libfuzzer_sys::fuzz_target;

/// Linking zeroes the whole region first; larger regions (up to the linker's
/// own 256 MiB limit) only slow the fuzzer down without reaching new code.
const MAX_FUZZED_REGION: u64 = 16 << 20;
const TARGET: u64 = 0x5555_5555_0000;

/// A stable address for each imported name, some names unknown.
fn resolve(name: &str) -> Option<u64> {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (h % 7 != 0).then_some(TARGET + (h & 0x0fff_fff0))
}

fn tls(name: &str) -> Result<TlsSymbol, String> {
    match name.len() % 3 {
        0 => Ok(TlsSymbol { module_id: 1, offset: 16, tp_offset: Some(-64) }),
        1 => Ok(TlsSymbol { module_id: 2, offset: 8, tp_offset: None }),
        _ => Err(format!("no thread-local {name}")),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(plan) = LinkPlan::new(data, 4096) else { return };
    let size = plan.region_size();
    assert_eq!(size % 4096, 0);
    assert!(size >= plan.header_reserve());
    let segments = plan.segments();
    let _ = (plan.undefined_symbols(), plan.tls_symbols(), plan.defined_functions());
    if size > MAX_FUZZED_REGION {
        return;
    }
    for base in [TARGET + 0x1000_0000, 0x7f00_0000_0000] {
        let Ok(image) = plan.link_with_tls(base, &mut resolve, &mut tls) else { continue };
        assert_eq!(image.base, base);
        assert_eq!(image.bytes.len() as u64, size);
        assert_eq!(image.segments, segments, "segments are the same at every base");
        for s in &image.segments {
            assert!(s.offset % 4096 == 0 && s.len % 4096 == 0 && s.offset + s.len <= size, "{s:?} in {size}");
            assert!(matches!(s.prot, Prot::Read | Prot::ReadExec | Prot::ReadWrite));
        }
        for (name, &addr) in &image.symbols {
            assert!(addr >= base && addr <= base + size, "{name} at {addr:#x} outside the region");
        }
        if let Some(eh) = &image.eh_frame {
            assert!(eh.start >= base && eh.end + 4 <= base + size, "eh_frame {eh:?}");
        }
    }
});
