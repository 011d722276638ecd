//! Relocation results checked in the linked bytes, decoded by objdump.

mod common;

use common::{NO_PIC, PAYLOAD, PIC, compile, disassemble, function, prot_at, read_i32, read_u64, stub_target};
use hotpatch_link::{LinkPlan, LinkedImage, Prot};
use std::collections::BTreeMap;

const BASE: u64 = 0x7f00_0000_0000;
const NEAR_STRLEN: u64 = BASE + 0x4000_0000;
const FAR_SNPRINTF: u64 = 0x1000_0000_0000;
const COUNTER: u64 = 0x5555_0000_1000;

fn pic_payload() -> Vec<u8> {
    let mut flags = PIC.to_vec();
    flags.push("-fcommon");
    compile(PAYLOAD, &flags)
}

fn link_with(obj: &[u8], base: u64, table: &[(&str, u64)]) -> LinkedImage {
    let table: BTreeMap<&str, u64> = table.iter().copied().collect();
    let plan = LinkPlan::new(obj, 4096).expect("plan");
    plan.link(base, &mut |name| table.get(name).copied()).expect("link")
}

fn linked() -> LinkedImage {
    link_with(
        &pic_payload(),
        BASE,
        &[("strlen", NEAR_STRLEN), ("snprintf", FAR_SNPRINTF), ("hp_test_counter", COUNTER)],
    )
}

/// Targets of call and jmp instructions that leave the function.
fn outgoing(image: &LinkedImage, name: &str) -> Vec<u64> {
    let insns = function(image, name);
    let (first, last) = (insns.first().unwrap().addr, insns.last().unwrap().addr);
    insns
        .iter()
        .filter(|i| i.text.starts_with("call") || i.text.starts_with("jmp"))
        .filter_map(|i| i.target())
        .filter(|&t| t < first || t > last)
        .collect()
}

#[test]
fn near_call_is_direct_and_far_call_goes_through_a_stub() {
    let image = linked();
    let targets = outgoing(&image, "replacement");
    assert!(targets.contains(&NEAR_STRLEN), "no direct call to strlen among {targets:x?}");
    let via_stub: Vec<u64> = targets.iter().filter_map(|&t| stub_target(&image, t)).collect();
    assert_eq!(via_stub, vec![FAR_SNPRINTF], "snprintf must be reached through exactly one stub");
    let stub = targets.iter().copied().find(|&t| stub_target(&image, t).is_some()).unwrap();
    assert_eq!(prot_at(&image, stub), Some(Prot::ReadExec), "stubs live in the text segment");
    let defined: Vec<u64> = image.symbols.values().copied().collect();
    for t in targets {
        assert!(
            t == NEAR_STRLEN || stub_target(&image, t) == Some(FAR_SNPRINTF) || defined.contains(&t),
            "call/jmp to 0x{t:x}, which is neither a resolved symbol, a stub, nor a payload function"
        );
    }
}

#[test]
fn calls_within_the_region_are_direct() {
    let image = linked();
    let apply = function(&image, "apply");
    // `apply` calls through the table; `replacement` calls a helper in the payload.
    let helper = outgoing(&image, "replacement")
        .into_iter()
        .find(|t| image.symbols.iter().any(|(n, a)| n.starts_with("helper") && a == t));
    assert!(helper.is_some(), "replacement does not call its helper directly");
    assert!(!apply.is_empty());
}

#[test]
fn got_entry_holds_the_absolute_address() {
    let image = linked();
    let loads: Vec<u64> = function(&image, "replacement")
        .iter()
        .filter(|i| i.text.starts_with("mov") && i.text.contains("(%rip)"))
        .filter_map(|i| i.target())
        .filter(|&t| prot_at(&image, t) == Some(Prot::Read))
        .collect();
    // The host's counter and the payload's own COMMON block (default
    // visibility, so PIC code reaches it through the GOT too).
    let mut held: Vec<u64> = loads.iter().map(|&a| read_u64(&image, a)).collect();
    held.sort();
    let mut want = vec![COUNTER, image.symbols["hp_common_block"]];
    want.sort();
    assert_eq!(held, want, "GOT entries loaded by replacement");
}

#[test]
fn string_literal_in_rodata_is_reachable_from_lea() {
    let image = linked();
    let insns = function(&image, "greeting");
    let lea = insns.iter().find(|i| i.text.starts_with("lea")).expect("greeting has a lea");
    let target = lea.target().expect("lea is rip-relative");
    assert_eq!(prot_at(&image, target), Some(Prot::Read));
    let o = (target - image.base) as usize;
    let want = b"hello from the patch region\0";
    assert_eq!(&image.bytes[o..o + want.len()], want);
}

#[test]
fn static_data_keeps_its_initial_value_and_bss_is_zero() {
    let image = linked();
    let base_value = image.symbols["base_value"];
    assert_eq!(read_i32(&image, base_value), 40);
    assert_eq!(prot_at(&image, base_value), Some(Prot::ReadWrite));
    let calls = image.symbols["calls"];
    assert_eq!(read_i32(&image, calls), 0);
    assert_eq!(prot_at(&image, calls), Some(Prot::ReadWrite));
    let common = image.symbols["hp_common_block"];
    assert_eq!(prot_at(&image, common), Some(Prot::ReadWrite));
    assert_eq!(common % 4, 0, "COMMON block keeps its alignment");
    assert_eq!(read_i32(&image, common), 0);
    // The code's PC-relative reference to `calls` lands on it.
    let refs: Vec<u64> = function(&image, "replacement").iter().filter_map(|i| i.target()).collect();
    assert!(refs.contains(&calls), "no reference to calls (0x{calls:x}) among {refs:x?}");
    assert!(
        refs.contains(&common) || refs.iter().any(|&t| read_u64(&image, t) == common),
        "hp_common_block unreachable"
    );
}

#[test]
fn function_pointer_table_is_relocated_and_read_only() {
    let image = linked();
    let ops = image.symbols["ops"];
    assert_eq!(prot_at(&image, ops), Some(Prot::Read), ".data.rel.ro is placed read-only");
    assert_eq!(read_u64(&image, ops), image.symbols["twice"]);
    assert_eq!(read_u64(&image, ops + 8), image.symbols["thrice"]);
}

#[test]
fn unused_stub_slots_are_traps_when_everything_is_near() {
    let obj = pic_payload();
    let image = link_with(
        &obj,
        BASE,
        &[("strlen", BASE + 0x1000_0000), ("snprintf", BASE - 0x1000_0000), ("hp_test_counter", COUNTER)],
    );
    for t in outgoing(&image, "replacement") {
        assert_eq!(stub_target(&image, t), None, "near call 0x{t:x} went through a stub");
    }
    let text = image.segments.iter().find(|s| s.prot == Prot::ReadExec).unwrap();
    let bytes = &image.bytes[text.offset as usize..(text.offset + text.len) as usize];
    assert!(!bytes.windows(6).any(|w| w == [0xff, 0x25, 0, 0, 0, 0]), "a stub was written though none was needed");
    assert!(bytes.ends_with(&[0xcc; 16]), "padding after code and stubs is int3");
}

#[test]
fn non_pic_absolute_32_bit_relocations() {
    let src = r#"
        extern int hp_arr[];
        int pick(int i) { return hp_arr[i]; }
        unsigned long where(void) { return (unsigned long)&hp_arr[0]; }
    "#;
    let obj = compile(src, NO_PIC);
    let low_base = 0x1000_0000;
    let arr = 0x2000_0040;
    let image = link_with(&obj, low_base, &[("hp_arr", arr)]);
    let pick = function(&image, "pick");
    let text: Vec<&str> = pick.iter().map(|i| i.text.as_str()).collect();
    assert!(
        pick.iter().any(|i| i.text.contains(&format!("0x{arr:x}(,"))),
        "pick does not index hp_arr at its address (32S): {text:?}"
    );
    let where_ = function(&image, "where");
    assert!(
        where_.iter().any(|i| i.text.contains(&format!("$0x{arr:x}"))),
        "where does not load hp_arr's address (R_X86_64_32): {:?}",
        where_.iter().map(|i| &i.text).collect::<Vec<_>>()
    );
}

#[test]
fn every_byte_of_code_decodes() {
    let image = linked();
    let text = image.segments.iter().find(|s| s.prot == Prot::ReadExec).unwrap();
    let insns = disassemble(&image, text.offset, text.len);
    assert!(!insns.iter().any(|i| i.text.contains("(bad)")), "undecodable bytes in the text segment");
}
