//! Region layout: segments, header reserve, alignment, symbol lists.

mod common;

use common::{PAYLOAD, PIC, compile, prot_at};
use hotpatch_link::{LinkPlan, PAGE, Prot};

fn payload() -> Vec<u8> {
    let mut flags = PIC.to_vec();
    flags.push("-fcommon");
    compile(PAYLOAD, &flags)
}

fn resolve(_: &str) -> Option<u64> {
    Some(0x1000_0000_0000)
}

#[test]
fn segments_are_page_aligned_contiguous_and_never_writable_and_executable() {
    let plan = LinkPlan::new(&payload(), 100).unwrap();
    assert_eq!(plan.header_reserve(), PAGE);
    let image = plan.link(0x7f00_0000_0000, &mut resolve).unwrap();
    assert_eq!(image.bytes.len() as u64, plan.region_size());
    assert_eq!(plan.region_size() % PAGE, 0);
    let prots: Vec<Prot> = image.segments.iter().map(|s| s.prot).collect();
    assert_eq!(prots, vec![Prot::ReadExec, Prot::Read, Prot::ReadWrite]);
    let mut next = PAGE;
    for s in &image.segments {
        assert_eq!(s.offset, next, "segments cover the region after the header without gaps");
        assert!(s.len > 0 && s.len % PAGE == 0);
        next = s.offset + s.len;
    }
    assert_eq!(next, plan.region_size());
    assert_eq!(plan.segments(), image.segments);
    assert!(image.bytes[..PAGE as usize].iter().all(|&b| b == 0), "header reserve is left zero");
}

#[test]
fn header_reserve_is_rounded_up_to_a_page() {
    let obj = payload();
    for (reserve, first) in [(0, 0), (1, PAGE), (PAGE, PAGE), (PAGE + 1, 2 * PAGE), (3 * PAGE, 3 * PAGE)] {
        let plan = LinkPlan::new(&obj, reserve).unwrap();
        assert_eq!(plan.segments()[0].offset, first, "reserve {reserve}");
        assert_eq!(plan.header_reserve(), first);
    }
}

#[test]
fn empty_parts_are_left_out() {
    let mut flags = PIC.to_vec();
    flags.push("-fno-asynchronous-unwind-tables");
    let plan = LinkPlan::new(&compile("int get(int x) { return x * 7; }", &flags), 0).unwrap();
    let prots: Vec<Prot> = plan.segments().iter().map(|s| s.prot).collect();
    assert_eq!(prots, vec![Prot::ReadExec]);
    assert_eq!(plan.region_size(), PAGE);
    assert_eq!(plan.link(0x7f00_0000_0000, &mut resolve).unwrap().eh_frame, None);

    let plan = LinkPlan::new(&compile("int hp_a = 1; int hp_b;", PIC), 0).unwrap();
    let prots: Vec<Prot> = plan.segments().iter().map(|s| s.prot).collect();
    assert_eq!(prots, vec![Prot::ReadWrite]);
}

#[test]
fn section_alignment_is_honoured() {
    let src = r#"
        int hp_aligned[4] __attribute__((aligned(256))) = {1, 2, 3, 4};
        static char hp_odd = 1;
        char *odd(void) { return &hp_odd; }
        __attribute__((aligned(64))) int f64(void) { return 64; }
    "#;
    let plan = LinkPlan::new(&compile(src, PIC), 0).unwrap();
    let image = plan.link(0x7f00_0000_0000, &mut resolve).unwrap();
    assert_eq!(image.symbols["hp_aligned"] % 256, 0);
    assert_eq!(image.symbols["f64"] % 64, 0);
    let o = (image.symbols["hp_aligned"] - image.base) as usize;
    assert_eq!(&image.bytes[o..o + 8], &[1, 0, 0, 0, 2, 0, 0, 0]);
}

#[test]
fn symbol_lists() {
    let plan = LinkPlan::new(&payload(), 0).unwrap();
    assert_eq!(plan.undefined_symbols(), vec!["hp_test_counter", "snprintf", "strlen"]);
    let defined = plan.defined_functions();
    for f in ["apply", "greeting", "replacement", "set_base", "twice", "thrice"] {
        assert!(defined.iter().any(|d| d == f), "{f} missing from {defined:?}");
    }
    assert!(!defined.iter().any(|d| d == "ops" || d == "calls" || d == "strlen"), "{defined:?}");
    let image = plan.link(0x7f00_0000_0000, &mut resolve).unwrap();
    for f in &defined {
        assert_eq!(prot_at(&image, image.symbols[f]), Some(Prot::ReadExec), "{f}");
    }
    assert!(!image.symbols.keys().any(|k| k.starts_with(".L") || k.is_empty()));
    assert!(!image.symbols.contains_key("strlen"), "undefined symbols are not exported");
}

#[test]
fn same_layout_at_every_base_and_unaligned_input_is_fine() {
    let obj = payload();
    let plan = LinkPlan::new(&obj, 0).unwrap();
    let a = plan.link(0x7f00_0000_0000, &mut resolve).unwrap();
    let b = plan.link(0x7f00_1234_5000, &mut resolve).unwrap();
    assert_eq!(a.segments, b.segments);
    for (name, addr) in &a.symbols {
        assert_eq!(addr - a.base, b.symbols[name] - b.base, "{name}");
    }
    assert_ne!(a.bytes, b.bytes, "absolute relocations differ between bases");
    // A payload cut out of a package at an odd offset.
    let mut shifted = vec![0u8; 1];
    shifted.extend_from_slice(&obj);
    let odd = LinkPlan::new(&shifted[1..], 0).unwrap();
    assert_eq!(odd.link(0x7f00_0000_0000, &mut resolve).unwrap(), a);
}

#[test]
fn unloaded_sections_contribute_nothing() {
    // Debug info, .comment, .note.GNU-stack, .eh_frame: none of it is loaded.
    let src = "int get(int x) { return x + 1; }";
    let plain = LinkPlan::new(&compile(src, PIC), 0).unwrap();
    let debug =
        LinkPlan::new(&compile(src, &["-fPIC", "-O2", "-ffunction-sections", "-g", "-fasynchronous-unwind-tables"]), 0)
            .unwrap();
    assert_eq!(plain.region_size(), debug.region_size());
    let image = debug.link(0x7f00_0000_0000, &mut resolve).unwrap();
    let o = (image.symbols["get"] - image.base) as usize;
    // lea 0x1(%rdi),%eax; ret
    assert_eq!(&image.bytes[o..o + 4], &[0x8d, 0x47, 0x01, 0xc3]);
}

#[test]
fn unwind_tables_are_loaded_read_only_and_terminated() {
    let image = LinkPlan::new(&payload(), 0).unwrap().link(0x7f00_0000_0000, &mut resolve).unwrap();
    let eh = image.eh_frame.clone().expect("gcc emits .eh_frame by default");
    assert!(eh.start < eh.end && eh.start % 4 == 0);
    assert_eq!(prot_at(&image, eh.start), Some(Prot::Read));
    assert_eq!(prot_at(&image, eh.end + 3), Some(Prot::Read));
    let end = (eh.end - image.base) as usize;
    assert_eq!(&image.bytes[end..end + 4], &[0, 0, 0, 0], "zero terminator after the tables");
    // Walk the entries by their length fields: they must tile the range exactly.
    let mut at = eh.start;
    let mut fdes = 0;
    while at < eh.end {
        let o = (at - image.base) as usize;
        let len = u32::from_le_bytes(image.bytes[o..o + 4].try_into().unwrap()) as u64;
        let id = u32::from_le_bytes(image.bytes[o + 4..o + 8].try_into().unwrap());
        if id != 0 {
            // An FDE: pc_begin (pcrel sdata4, gcc's encoding) lands on a payload function.
            let pc = (at + 8).wrapping_add_signed(common::read_i32(&image, at + 8) as i64);
            assert!(image.symbols.values().any(|&a| a == pc), "FDE at 0x{at:x} covers 0x{pc:x}, not a function");
            fdes += 1;
        }
        at += 4 + len;
    }
    assert_eq!(at, eh.end);
    assert!(fdes >= 6, "one FDE per function, found {fdes}");
}
