//! Thread-local variables of the process, in every access model gcc emits,
//! checked in the linked bytes (decoded by objdump).

mod common;

use common::{PIC, compile, function, prot_at, read_u64, stub_target};
use hotpatch_link::{LinkError, LinkPlan, LinkedImage, Prot, TlsSymbol};

const BASE: u64 = 0x7f00_0000_0000;
const TLS_GET_ADDR: u64 = 0x1000_0000_0000;
const SRC: &str = "extern __thread int hp_tls; int get(void) { return hp_tls; }";
const VAR: TlsSymbol = TlsSymbol { module_id: 1, offset: 8, tp_offset: Some(-24) };

fn plan(model: &str, src: &str) -> LinkPlan {
    let mut flags = PIC.to_vec();
    let model = format!("-ftls-model={model}");
    flags.push(&model);
    LinkPlan::new(&compile(src, &flags), 4096).expect("plan")
}

fn link(plan: &LinkPlan, var: TlsSymbol) -> Result<LinkedImage, LinkError> {
    let mut asked = Vec::new();
    let image = plan.link_with_tls(BASE, &mut |n| (n == "__tls_get_addr").then_some(TLS_GET_ADDR), &mut |n| {
        asked.push(n.to_string());
        if n.starts_with("hp_tls") { Ok(var) } else { Err(format!("{n} unknown")) }
    });
    let mut unique = asked.clone();
    unique.dedup();
    assert_eq!(unique, asked, "asked once per name");
    image
}

/// The RIP-relative operands of `get`, as absolute addresses.
fn rip_targets(image: &LinkedImage) -> Vec<u64> {
    function(image, "get").iter().filter(|i| i.text.contains("(%rip)")).filter_map(|i| i.target()).collect()
}

#[test]
fn initial_exec_reads_the_offset_from_a_read_only_got_entry() {
    let image = link(&plan("initial-exec", SRC), VAR).expect("link");
    let slots = rip_targets(&image);
    assert_eq!(slots.len(), 1, "{slots:x?}");
    assert_eq!(read_u64(&image, slots[0]) as i64, -24);
    assert_eq!(prot_at(&image, slots[0]), Some(Prot::Read));
    assert!(function(&image, "get").iter().any(|i| i.text.contains("%fs:")), "reads through %fs");
}

#[test]
fn local_exec_puts_the_offset_in_the_instruction() {
    let image = link(&plan("local-exec", SRC), VAR).expect("link");
    let insns = function(&image, "get");
    assert!(insns.iter().any(|i| i.text.contains("%fs:0xffffffffffffffe8")), "{insns:?}");
}

#[test]
fn general_dynamic_hands_a_tls_index_pair_to_tls_get_addr() {
    let image = link(&plan("global-dynamic", SRC), VAR).expect("link");
    let pair = rip_targets(&image)[0];
    assert_eq!((read_u64(&image, pair), read_u64(&image, pair + 8)), (1, 8));
    assert_eq!(prot_at(&image, pair), Some(Prot::Read));
    let calls: Vec<u64> =
        // `data16 data16 rex.W call ADDR`: the padded call of the GD sequence.
        function(&image, "get")
            .iter()
            .filter(|i| i.text.contains("call"))
            .filter_map(|i| u64::from_str_radix(i.text.split_whitespace().last()?.strip_prefix("0x")?, 16).ok())
            .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(stub_target(&image, calls[0]), Some(TLS_GET_ADDR), "far __tls_get_addr through a stub");
}

#[test]
fn local_dynamic_uses_the_module_pair_and_the_offset_in_the_block() {
    let src = "extern __thread int hp_tls; extern __thread int hp_tls2; int get(void) { return hp_tls + hp_tls2; }";
    let image = link(&plan("local-dynamic", src), VAR).expect("link");
    let pairs = rip_targets(&image);
    assert!(!pairs.is_empty());
    for pair in pairs {
        assert_eq!((read_u64(&image, pair), read_u64(&image, pair + 8)), (1, 0));
    }
    let insns = function(&image, "get");
    // DTPOFF32: the variable's offset in the block, as a displacement off %rax.
    assert!(insns.iter().any(|i| i.text.contains("0x8(%rax)")), "{insns:?}");
}

#[test]
fn exec_models_need_static_tls() {
    let dynamic_only = TlsSymbol { tp_offset: None, ..VAR };
    for model in ["initial-exec", "local-exec"] {
        match link(&plan(model, SRC), dynamic_only).unwrap_err() {
            LinkError::TlsSymbol { symbol, reason } => {
                assert_eq!(symbol, "hp_tls");
                assert!(reason.contains("-ftls-model=global-dynamic"), "{reason}");
            }
            other => panic!("{model}: expected TlsSymbol, got {other:?}"),
        }
    }
    assert!(link(&plan("global-dynamic", SRC), dynamic_only).is_ok());
}

#[test]
fn dynamic_models_need_the_module_id() {
    let static_only = TlsSymbol { module_id: 0, ..VAR };
    match link(&plan("global-dynamic", SRC), static_only).unwrap_err() {
        LinkError::TlsSymbol { reason, .. } => assert!(reason.contains("-ftls-model=initial-exec"), "{reason}"),
        other => panic!("expected TlsSymbol, got {other:?}"),
    }
    assert!(link(&plan("initial-exec", SRC), static_only).is_ok());
}

#[test]
fn local_dynamic_across_modules_is_refused() {
    let src = "extern __thread int hp_tls; extern __thread int hp_other; int get(void) { return hp_tls + hp_other; }";
    let plan = plan("local-dynamic", src);
    let e = plan
        .link_with_tls(BASE, &mut |_| Some(TLS_GET_ADDR), &mut |n| {
            Ok(TlsSymbol { module_id: if n == "hp_tls" { 1 } else { 2 }, ..VAR })
        })
        .unwrap_err();
    assert!(matches!(&e, LinkError::TlsSymbol { reason, .. } if reason.contains("different modules")), "{e:?}");
}

#[test]
fn a_resolver_refusal_names_the_variable() {
    let plan = plan("global-dynamic", SRC);
    let e =
        plan.link_with_tls(BASE, &mut |_| Some(TLS_GET_ADDR), &mut |_| Err("not in the process".into())).unwrap_err();
    assert_eq!(e.to_string(), "thread-local symbol hp_tls: not in the process");
}
