//! Every refusal, on real objects (or real objects with one field changed).

mod common;

use common::{NO_PIC, PIC, compile, compile_to};
use hotpatch_link::{LinkError, LinkPlan, MAX_REGION_SIZE};

const BASE: u64 = 0x7f00_0000_0000;
const SIMPLE: &str = "int hp_value = 3; int get(void) { return hp_value; }";

fn plan_err(obj: &[u8]) -> LinkError {
    LinkPlan::new(obj, 4096).expect_err("plan must be refused")
}

#[test]
fn not_elf() {
    for bytes in [&b""[..], b"\x7fEL", b"#!/bin/sh\necho this is not an object\n"] {
        let e = plan_err(bytes);
        assert!(matches!(e, LinkError::Malformed(_)), "{e:?}");
    }
    assert!(plan_err(b"MZ\x90\x00 not elf at all").to_string().contains("ELF magic"));
}

#[test]
fn wrong_class_or_byte_order() {
    let obj = compile(SIMPLE, PIC);
    let mut class32 = obj.clone();
    class32[4] = 1;
    assert!(matches!(plan_err(&class32), LinkError::WrongClass(m) if m.contains("ELFCLASS64")));
    let mut big = obj;
    big[5] = 2;
    assert!(matches!(plan_err(&big), LinkError::WrongClass(m) if m.contains("ELFDATA2LSB")));
}

#[test]
fn shared_object_and_executable_are_not_relocatable() {
    let so = compile_to(SIMPLE, &["-fPIC"], &["-shared"], "so");
    let e = plan_err(&so);
    assert_eq!(e, LinkError::NotRelocatable(3));
    assert!(e.to_string().contains("ET_DYN"), "{e}");
    let exe = compile_to("int main(void) { return 0; }", &["-no-pie"], &[], "exe");
    assert_eq!(plan_err(&exe), LinkError::NotRelocatable(2));
}

#[test]
fn wrong_machine() {
    let mut obj = compile(SIMPLE, PIC);
    // e_machine is the little-endian u16 at offset 18; 183 is EM_AARCH64.
    obj[18..20].copy_from_slice(&183u16.to_le_bytes());
    let e = plan_err(&obj);
    assert_eq!(e, LinkError::WrongMachine(183));
    assert!(e.to_string().contains("EM_X86_64"));
}

#[test]
fn undefined_symbol_the_resolver_does_not_know() {
    let obj = compile("extern int hp_missing(int); int f(int x) { return hp_missing(x) + 1; }", PIC);
    let plan = LinkPlan::new(&obj, 0).unwrap();
    assert_eq!(plan.undefined_symbols(), vec!["hp_missing".to_string()]);
    let mut asked = Vec::new();
    let e = plan
        .link(BASE, &mut |n| {
            asked.push(n.to_string());
            None
        })
        .unwrap_err();
    assert_eq!(e, LinkError::UndefinedSymbol("hp_missing".into()));
    assert_eq!(asked, vec!["hp_missing".to_string()], "resolver asked once per name");
}

#[test]
fn pc32_out_of_range_names_the_distance() {
    // Hidden visibility: PIC code reaches it PC-relative, without the GOT.
    let src = r#"extern int hp_far __attribute__((visibility("hidden"))); int get(void) { return hp_far; }"#;
    let obj = compile(src, PIC);
    let plan = LinkPlan::new(&obj, 0).unwrap();
    let near = BASE + (1 << 30);
    assert!(plan.link(BASE, &mut |_| Some(near)).is_ok(), "1 GiB away fits");
    let far = BASE + (3 << 30);
    let e = plan.link(BASE, &mut |_| Some(far)).unwrap_err();
    match &e {
        LinkError::OutOfRange { relocation, symbol, place, target } => {
            assert_eq!(*relocation, "R_X86_64_PC32");
            assert_eq!(symbol, "hp_far");
            assert!(*place >= BASE && *place < BASE + 4096);
            assert_eq!(*target, far - 4, "target includes the addend");
        }
        other => panic!("expected OutOfRange, got {other:?}"),
    }
    let msg = e.to_string();
    let LinkError::OutOfRange { place, target, .. } = e else { unreachable!() };
    assert!(msg.contains(&format!("distance {} bytes", target - place)), "{msg}");
}

#[test]
fn absolute_32_bit_out_of_range() {
    let obj = compile("extern int hp_arr[]; int pick(int i) { return hp_arr[i]; }", NO_PIC);
    let plan = LinkPlan::new(&obj, 0).unwrap();
    let e = plan.link(0x1000_0000, &mut |_| Some(0x7f00_0000_0000)).unwrap_err();
    assert!(
        matches!(&e, LinkError::ValueOutOfRange { relocation: "R_X86_64_32S", symbol, .. } if symbol == "hp_arr"),
        "{e:?}"
    );
    assert!(e.to_string().contains("signed 32-bit"), "{e}");
}

#[test]
fn thread_local_definition_is_refused() {
    let e = plan_err(&compile("__thread int hp_tls; int get(void) { return hp_tls; }", PIC));
    match e {
        LinkError::UnsupportedSection { section, reason } => {
            assert!(section.starts_with(".tbss"), "{section}");
            assert!(reason.contains("thread-local"), "{reason}");
        }
        other => panic!("expected UnsupportedSection, got {other:?}"),
    }
}

#[test]
fn thread_local_reference_needs_a_tls_resolver() {
    let plan = LinkPlan::new(&compile("extern __thread int hp_tls; int get(void) { return hp_tls; }", PIC), 0)
        .expect("TLS references are planned");
    assert_eq!(plan.tls_symbols(), vec!["hp_tls".to_string()]);
    assert!(!plan.undefined_symbols().contains(&"hp_tls".to_string()), "not resolved as an address");
    match plan.link(BASE, &mut |_| Some(BASE + 0x10_0000)).unwrap_err() {
        LinkError::TlsSymbol { symbol, .. } => assert_eq!(symbol, "hp_tls"),
        other => panic!("expected TlsSymbol, got {other:?}"),
    }
}

#[test]
fn tls_descriptors_are_refused_with_the_reason() {
    let mut flags = PIC.to_vec();
    flags.push("-mtls-dialect=gnu2");
    let e = plan_err(&compile("extern __thread int hp_tls; int get(void) { return hp_tls; }", &flags));
    match &e {
        LinkError::UnsupportedRelocation { kind, section, .. } => {
            assert!(kind.contains("TLSDESC") && kind.contains("-mtls-dialect=gnu"), "{kind}");
            assert_eq!(section, ".text.get");
        }
        other => panic!("expected UnsupportedRelocation, got {other:?}"),
    }
}

#[test]
fn large_code_model_relocations_are_refused() {
    let e = plan_err(&compile(
        "extern int hp_x; static int y; int get(void) { return hp_x + y; }",
        &["-fPIC", "-O2", "-mcmodel=large"],
    ));
    match e {
        LinkError::UnsupportedRelocation { kind, .. } => {
            assert!(kind.contains("GOTPC64") || kind.contains("GOTOFF64") || kind.contains("GOT64"), "{kind}")
        }
        other => panic!("expected UnsupportedRelocation, got {other:?}"),
    }
}

#[test]
fn constructors_and_destructors_are_refused() {
    for attr in ["constructor", "destructor"] {
        let src = format!(
            "static int hp_v; __attribute__(({attr})) static void hp_init(void) {{ hp_v = 1; }} int get(void) {{ return hp_v; }}"
        );
        match plan_err(&compile(&src, PIC)) {
            LinkError::UnsupportedSection { section, reason } => {
                assert!(section.starts_with(".init_array") || section.starts_with(".fini_array"), "{section}");
                assert!(reason.contains("never run"), "{reason}");
            }
            other => panic!("{attr}: expected UnsupportedSection, got {other:?}"),
        }
    }
}

#[test]
fn ifunc_definition_is_refused() {
    let src = r#"
        static int impl(void) { return 1; }
        static void *resolve_get(void) { return (void *)impl; }
        int get(void) __attribute__((ifunc("resolve_get")));
    "#;
    assert!(matches!(plan_err(&compile(src, PIC)), LinkError::UnsupportedSymbol { symbol, .. } if symbol == "get"));
}

#[test]
fn alignment_above_a_page_is_refused() {
    let e =
        plan_err(&compile("int hp_big __attribute__((aligned(8192))) = 1; int *get(void) { return &hp_big; }", PIC));
    assert!(matches!(&e, LinkError::UnsupportedSection { reason, .. } if reason.contains("alignment 8192")), "{e:?}");
}

#[test]
fn region_too_large_is_refused_before_allocating() {
    let src = format!("static char hp_huge[{}]; char *get(void) {{ return hp_huge; }}", MAX_REGION_SIZE + 1);
    assert!(matches!(plan_err(&compile(&src, PIC)), LinkError::RegionTooLarge { .. }));
}

#[test]
fn truncated_object_is_refused_at_every_length() {
    let obj = compile(SIMPLE, PIC);
    // gcc writes the section header table last, so every strict prefix loses part of it.
    let shoff = u64::from_le_bytes(obj[0x28..0x30].try_into().unwrap()) as usize;
    let shnum = u16::from_le_bytes(obj[0x3c..0x3e].try_into().unwrap()) as usize;
    assert_eq!(shoff + shnum * 64, obj.len());
    for len in 0..obj.len() {
        let e = LinkPlan::new(&obj[..len], 0).expect_err("truncated object accepted");
        assert!(matches!(e, LinkError::Malformed(_)), "at {len}: {e:?}");
    }
    assert!(LinkPlan::new(&obj, 0).is_ok());
}

#[test]
fn bad_base_address() {
    let plan = LinkPlan::new(&compile(SIMPLE, PIC), 0).unwrap();
    assert!(matches!(plan.link(BASE + 12, &mut |_| None), Err(LinkError::BadBase { .. })));
    assert!(matches!(plan.link(!0xfff_u64, &mut |_| None), Err(LinkError::BadBase { .. })));
}
