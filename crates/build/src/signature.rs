//! A function's calling signature as the ABI sees it, read from an object's
//! DWARF: how many arguments, of which class (integer of a size, floating
//! point, pointer, aggregate of a size), and what it returns.
//!
//! Code that calls a function the patch replaces but that the patch does not
//! replace itself keeps passing arguments the old way: a program linked
//! against a library's export, a caller through a function pointer, a caller
//! whose code did not change. When the fix changes the signature that way,
//! the replacement would read arguments that were never passed, so the
//! builder refuses it. Type names are left out on purpose: `char *` becoming
//! `const char *`, or `int` becoming a typedef of it, changes nothing at a
//! call.

use crate::dwarf::Slice;
use gimli::{AttributeValue, DW_AT_byte_size, DW_AT_declaration, DW_AT_encoding, DW_AT_name, DW_AT_type};
use std::collections::BTreeMap;

/// How deep a chain of typedefs and qualifiers is followed.
const MAX_TYPE_HOPS: u32 = 16;

/// Function name → ABI signature (e.g. `i4(p,i8,...)`), for the functions
/// the object defines. Empty when the object has no DWARF (built without
/// `-g`); malformed DWARF yields what could be read.
pub fn signatures(object: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    crate::dwarf::for_each_unit(object, |dwarf, unit| read_unit(dwarf, unit, &mut out));
    out
}

fn read_unit(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    unit: &gimli::Unit<Slice<'_>>,
    out: &mut BTreeMap<String, String>,
) -> gimli::Result<()> {
    let mut tree = unit.entries_tree(None)?;
    let root = tree.root()?;
    let mut children = root.children();
    while let Some(child) = children.next()? {
        let entry = child.entry();
        if entry.tag() != gimli::DW_TAG_subprogram || entry.attr_value(DW_AT_declaration).is_some() {
            continue;
        }
        let Some(name) = entry.attr_value(DW_AT_name).and_then(|v| dwarf.attr_string(unit, v).ok()) else {
            continue;
        };
        let returns = entry.attr_value(DW_AT_type).map_or_else(|| "v".to_owned(), |t| class_of(unit, t, 0));
        let mut params = Vec::new();
        let mut args = child.children();
        while let Some(arg) = args.next()? {
            let arg = arg.entry();
            match arg.tag() {
                gimli::DW_TAG_formal_parameter => {
                    params.push(arg.attr_value(DW_AT_type).map_or_else(|| "?".to_owned(), |t| class_of(unit, t, 0)))
                }
                gimli::DW_TAG_unspecified_parameters => params.push("...".to_owned()),
                _ => {}
            }
        }
        out.entry(String::from_utf8_lossy(name.slice()).into_owned())
            .or_insert_with(|| format!("{returns}({})", params.join(",")));
    }
    Ok(())
}

/// The ABI class of the type `value` refers to: `i4`, `f8`, `p`, `s24`, ...
fn class_of(unit: &gimli::Unit<Slice<'_>>, value: AttributeValue<Slice<'_>>, hops: u32) -> String {
    let AttributeValue::UnitRef(offset) = value else { return "?".to_owned() };
    let Ok(entry) = unit.entry(offset) else { return "?".to_owned() };
    let size = entry.attr_value(DW_AT_byte_size).and_then(|v| v.udata_value());
    let sized = |prefix: &str| format!("{prefix}{}", size.map_or("?".to_owned(), |s| s.to_string()));
    match entry.tag() {
        gimli::DW_TAG_base_type => {
            let float = matches!(
                entry.attr_value(DW_AT_encoding),
                Some(AttributeValue::Encoding(gimli::DW_ATE_float | gimli::DW_ATE_complex_float))
            );
            sized(if float { "f" } else { "i" })
        }
        gimli::DW_TAG_pointer_type
        | gimli::DW_TAG_reference_type
        | gimli::DW_TAG_rvalue_reference_type
        | gimli::DW_TAG_array_type
        | gimli::DW_TAG_ptr_to_member_type => "p".to_owned(),
        gimli::DW_TAG_enumeration_type => sized("i"),
        gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_class_type => sized("s"),
        gimli::DW_TAG_typedef
        | gimli::DW_TAG_const_type
        | gimli::DW_TAG_volatile_type
        | gimli::DW_TAG_restrict_type
        | gimli::DW_TAG_atomic_type
            if hops < MAX_TYPE_HOPS =>
        {
            entry.attr_value(DW_AT_type).map_or_else(|| "v".to_owned(), |t| class_of(unit, t, hops + 1))
        }
        other => format!("?{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Compiles `source` with gcc (as the builder's wrapper would) and reads it.
    fn compiled(source: &str, flags: &[&str]) -> BTreeMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("f.c");
        let o = dir.path().join("f.o");
        std::fs::write(&c, source).unwrap();
        let status = Command::new("gcc")
            .args(["-c", "-O2", "-ffunction-sections"])
            .args(flags)
            .arg(&c)
            .arg("-o")
            .arg(&o)
            .status()
            .unwrap();
        assert!(status.success());
        signatures(&std::fs::read(&o).unwrap())
    }

    const SOURCE: &str = r#"
        typedef unsigned long size_t;
        struct big { long a, b, c; };
        struct big make(int n, double d) { struct big b = { n, (long) d, 0 }; return b; }
        int count(const char *s, size_t n, ...) { return s[n]; }
        static int twice(short x) { return x * 2; }
        int use(short x) { return twice(x) + 1; }
        void nothing(void) {}
    "#;

    #[test]
    fn classes_of_arguments_and_results() {
        let sigs = compiled(SOURCE, &["-g"]);
        assert_eq!(sigs["make"], "s24(i4,f8)");
        assert_eq!(sigs["count"], "i4(p,i8,...)");
        assert_eq!(sigs["twice"], "i4(i2)");
        assert_eq!(sigs["nothing"], "v()");
    }

    #[test]
    fn type_names_that_do_not_change_a_call_are_not_a_change() {
        let before = compiled("int f(char *s, int n) { return s[n]; }", &["-g"]);
        let after = compiled("typedef int len_t; int f(const char *s, len_t n) { return s[n] + 1; }", &["-g"]);
        assert_eq!(before["f"], after["f"]);
        let wider = compiled("int f(char *s, long n) { return s[n]; }", &["-g"]);
        assert_ne!(before["f"], wider["f"]);
        let more = compiled("int f(char *s, int n, int m) { return s[n + m]; }", &["-g"]);
        assert_ne!(before["f"], more["f"]);
    }

    #[test]
    fn no_dwarf_no_signatures() {
        assert!(compiled(SOURCE, &[]).is_empty());
    }
}
