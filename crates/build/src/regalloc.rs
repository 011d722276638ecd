//! Whether the baseline was compiled with gcc's interprocedural register
//! allocation (`-fipa-ra`, on by default at `-O2`, `-O3`, `-Os`, `-Ofast`).
//!
//! With it, gcc lets a caller keep values in call-clobbered registers across a
//! call when it can see that the callee never touches them. A replacement
//! compiled separately knows nothing of that promise and may clobber those
//! registers: the caller then goes on with wrong values. Baselines meant for
//! hotpatching are built with `-fno-ipa-ra` (as kernel livepatch requires).
//!
//! The evidence is each compilation unit's `DW_AT_producer` (gcc records its
//! options there by default when compiling with `-g`). Without DWARF nothing
//! can be told, and the caller is told so.

/// What the baseline's DWARF says about `-fipa-ra`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpaRa {
    /// Every GNU compilation unit was compiled without it.
    Off { units: usize },
    /// This unit was compiled with it (the first such unit).
    On { unit: String, producer: String },
    /// No producer strings to go by (no DWARF, or not from gcc).
    Unknown,
}

/// Reads the producers of the baseline (or of its separate debug file).
pub fn ipa_ra(baseline: &[u8], debug_file: Option<&[u8]>) -> IpaRa {
    let units = debug_file.map(producers).filter(|u| !u.is_empty()).unwrap_or_else(|| producers(baseline));
    let gnu: Vec<&(String, String)> = units.iter().filter(|(_, p)| p.starts_with("GNU ")).collect();
    if gnu.is_empty() {
        return IpaRa::Unknown;
    }
    for (unit, producer) in &gnu {
        if ipa_ra_enabled(producer) {
            return IpaRa::On { unit: unit.clone(), producer: producer.clone() };
        }
    }
    IpaRa::Off { units: gnu.len() }
}

/// Whether gcc's options in a producer string turn `-fipa-ra` on: the last
/// `-O` level decides the default, the last explicit `-f[no-]ipa-ra` wins.
pub fn ipa_ra_enabled(producer: &str) -> bool {
    let mut by_level = false;
    let mut explicit = None;
    for option in producer.split_whitespace() {
        match option {
            "-fipa-ra" => explicit = Some(true),
            "-fno-ipa-ra" => explicit = Some(false),
            o if o.starts_with("-O") => by_level = matches!(&o[2..], "2" | "3" | "s" | "fast" | "z"),
            _ => {}
        }
    }
    explicit.unwrap_or(by_level)
}

/// (unit name, producer) of every compilation unit; empty when the object has no
/// readable DWARF. Malformed DWARF yields what could be read before it.
fn producers(elf: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    crate::dwarf::for_each_unit(elf, |dwarf, unit| {
        let text = |attr: gimli::DwAt| -> Option<String> {
            let mut entries = unit.entries();
            let root = entries.next_dfs().ok()??;
            let value = root.attr_value(attr)?;
            let s = dwarf.attr_string(unit, value).ok()?;
            Some(String::from_utf8_lossy(s.slice()).into_owned())
        };
        if let Some(producer) = text(gimli::DW_AT_producer) {
            out.push((text(gimli::DW_AT_name).unwrap_or_else(|| "?".into()), producer));
        }
        Ok(())
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_decide_as_gcc_does() {
        assert!(ipa_ra_enabled("GNU C17 12.2.0 -mtune=generic -march=x86-64 -g -O2"));
        assert!(ipa_ra_enabled("GNU C17 12.2.0 -Os -g"));
        assert!(!ipa_ra_enabled("GNU C17 12.2.0 -g -O1"));
        assert!(!ipa_ra_enabled("GNU C17 12.2.0 -g"));
        assert!(!ipa_ra_enabled("GNU C17 12.2.0 -g -O2 -fno-ipa-ra"));
        assert!(ipa_ra_enabled("GNU C17 12.2.0 -g -O1 -fipa-ra"));
        assert!(ipa_ra_enabled("GNU C17 12.2.0 -fno-ipa-ra -O2 -fipa-ra"));
        assert!(!ipa_ra_enabled("GNU C17 12.2.0 -O3 -O0"));
    }

    #[test]
    fn garbage_is_unknown() {
        assert_eq!(ipa_ra(b"not an elf", None), IpaRa::Unknown);
        assert_eq!(ipa_ra(&[], Some(b"\x7fELF")), IpaRa::Unknown);
    }
}
