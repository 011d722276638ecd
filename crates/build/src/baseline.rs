//! The shipped file the hotpatch is for, as the builder sees it: its code,
//! where its symbols are (its own symbol table, its debug file, or the
//! builder's own link of the original source once that is proven to be the
//! same code), and which PLT entries and GOT slots stand for which names.

use hotpatch_elf::{LookupError, Symbol, SymbolKind, SymbolTable, TargetElf};
use object::read::elf::{ElfFile64, Rela, SectionHeader, Sym};
use object::{Object, ObjectSection};
use std::collections::HashMap;

/// Where the baseline's symbol addresses come from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "path")]
pub enum SymbolOrigin {
    /// The baseline's own `.symtab`.
    Symtab,
    /// Its separate debug file (by build-id, or given).
    DebugFile(String),
    /// The builder's own link of the original source, whose code at those
    /// addresses is the baseline's byte for byte.
    Reference(String),
    /// Only `.dynsym`: exported names alone.
    Dynsym,
}

/// A GOT slot's contents as the dynamic linker will fill them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GotSlot {
    Named(String),
    Address(u64),
}

pub struct Baseline<'a> {
    pub elf: TargetElf<'a>,
    pub symbols: SymbolTable,
    pub origin: SymbolOrigin,
    /// Names exported in `.dynsym` (left to the engine's name lookup, as the
    /// dynamic linker would bind them).
    pub exports: std::collections::BTreeSet<String>,
    plt: HashMap<u64, String>,
    got: HashMap<u64, GotSlot>,
    pub compilers: Vec<String>,
    /// With symbols lent by a reference link: the addresses of the functions
    /// whose bytes the baseline has identically there. Only those may be
    /// bound by address without a run-pre match of their own.
    pub proven_functions: Option<std::collections::BTreeSet<u64>>,
    /// For a stripped baseline whose symbols no reference link could lend:
    /// where the closest reference first differs.
    pub reference_mismatch: Option<crate::runpre::Mismatch>,
    /// Symbols the table lacks whose address a run-pre match proved: the
    /// baseline's code that matched reaches them there (as Ksplice's run-pre
    /// matching locates local symbols). Keyed by name and, for a file-local
    /// one, its file.
    learned: std::cell::RefCell<std::collections::BTreeMap<(String, Option<String>), Symbol>>,
}

/// A symbol learned from one function's match, kept only if the whole function matches.
pub type Learned = Vec<((String, Option<String>), Symbol)>;

impl<'a> Baseline<'a> {
    pub fn new(elf: TargetElf<'a>, symbols: SymbolTable, origin: SymbolOrigin) -> Baseline<'a> {
        let (plt, got) = dynamic_slots(elf.data());
        let exports = dynamic_exports(&elf);
        let compilers = comments(elf.data());
        Baseline {
            elf,
            symbols,
            origin,
            exports,
            plt,
            got,
            compilers,
            proven_functions: None,
            reference_mismatch: None,
            learned: Default::default(),
        }
    }

    /// The symbol `name` (a file-local one of `file`): from the symbol
    /// table, else as a run-pre match located it.
    pub fn lookup(&self, name: &str, local: bool, file: Option<&str>) -> Result<Symbol, LookupError> {
        match self.lookup_table(name, local, file) {
            Err(LookupError::NotFound(_)) => {
                let key = (name.to_owned(), if local { file.map(str::to_owned) } else { None });
                self.learned.borrow().get(&key).cloned().ok_or_else(|| LookupError::NotFound(name.to_owned()))
            }
            found => found.cloned(),
        }
    }

    /// Whether `address` was located by a run-pre match (so it is proven).
    pub fn is_learned(&self, address: u64) -> bool {
        self.learned.borrow().values().any(|s| s.address == address)
    }

    /// How many symbols run-pre matches have located so far.
    pub fn learned_count(&self) -> usize {
        self.learned.borrow().len()
    }

    /// Keeps what one function's successful match located.
    pub fn learn(&self, learned: Learned) {
        let mut map = self.learned.borrow_mut();
        for (key, sym) in learned {
            map.entry(key).or_insert(sym);
        }
    }

    /// Gives a located symbol known without a size the size its matched code has.
    pub fn prove_size(&self, key: &(String, Option<String>), size: u64) {
        if let Some(sym) = self.learned.borrow_mut().get_mut(key).filter(|s| s.size == 0) {
            sym.size = size;
        }
    }

    fn lookup_table(&self, name: &str, local: bool, file: Option<&str>) -> Result<&Symbol, LookupError> {
        if local {
            // A local's name may be unique without the file; a file that
            // does not match is then another function of the same name.
            return match self.symbols.lookup(name, file) {
                Ok(s) => Ok(s),
                Err(LookupError::WrongFile { .. }) | Err(LookupError::NotFound(_)) => {
                    Err(LookupError::NotFound(name.to_owned()))
                }
                Err(e) => Err(e),
            };
        }
        let named = self.symbols.named(name);
        if let Some(global) = named.iter().find(|s| !s.local) {
            return Ok(global);
        }
        // A hidden global of the object is local once linked (the linker
        // demotes STV_HIDDEN symbols): one local of that name is it.
        match named.as_slice() {
            [one] => Ok(one),
            [] => Err(LookupError::NotFound(name.to_owned())),
            many => Err(LookupError::Ambiguous {
                name: name.to_owned(),
                candidates: many.iter().filter_map(|s| s.file.clone()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The name whose PLT entry is at `address`, if it is one.
    pub fn plt_name(&self, address: u64) -> Option<&str> {
        self.plt.get(&address).map(String::as_str)
    }

    pub fn got_slot(&self, address: u64) -> Option<&GotSlot> {
        self.got.get(&address)
    }

    /// Where `main` is, read from the entry point's code as glibc's `_start`
    /// hands it to `__libc_start_main` in `%rdi`: `lea main(%rip)`, `mov
    /// main@GOTPCREL(%rip)` (through its slot) or `mov $main` (fixed address).
    pub fn main_from_entry(&self) -> Option<u64> {
        let entry = self.elf.entry();
        let code = self.elf.bytes_at(entry, 64).filter(|_| self.elf.is_executable_range(entry, 64))?;
        let found = code.windows(7).enumerate().find_map(|(i, w)| {
            let next = entry.checked_add(i as u64 + 7)?;
            let rel = i32::from_le_bytes([w[3], w[4], w[5], w[6]]) as i64;
            match w[..3] {
                [0x48, 0x8d, 0x3d] => next.checked_add_signed(rel),
                [0x48, 0x8b, 0x3d] => match self.got_slot(next.checked_add_signed(rel)?)? {
                    GotSlot::Address(a) => Some(*a),
                    GotSlot::Named(_) => None,
                },
                [0x48, 0xc7, 0xc7] => u64::try_from(rel).ok(),
                _ => None,
            }
        })?;
        self.elf.is_executable_range(found, 1).then_some(found)
    }

    pub fn function_bytes(&self, sym: &Symbol) -> Option<&'a [u8]> {
        self.elf.bytes_at(sym.address, sym.size).filter(|_| self.elf.is_executable_range(sym.address, sym.size))
    }

    pub fn is_function(sym: &Symbol) -> bool {
        sym.kind == SymbolKind::Function
    }
}

/// Names the file exports (defined in `.dynsym`).
fn dynamic_exports(elf: &TargetElf<'_>) -> std::collections::BTreeSet<String> {
    use object::ObjectSymbol;
    let Ok(file) = object::File::parse(elf.data()) else { return Default::default() };
    file.dynamic_symbols()
        .filter(|s| matches!(s.section(), object::SymbolSection::Section(_)))
        .filter_map(|s| s.name().ok().filter(|n| !n.is_empty()).map(str::to_owned))
        .collect::<std::collections::BTreeSet<String>>()
}

/// `.comment` strings: the compilers that built the file (strip usually keeps them).
pub fn comments(data: &[u8]) -> Vec<String> {
    let Ok(file) = object::File::parse(data) else { return Vec::new() };
    let Some(section) = file.section_by_name(".comment") else { return Vec::new() };
    let bytes = section.data().unwrap_or(&[]);
    let mut out: Vec<String> =
        bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    out.dedup();
    out
}

/// PLT entries and GOT slots by address, from `.rela.plt` and `.rela.dyn`.
/// Each PLT entry (`.plt`, `.plt.sec`, `.plt.got`) is read for the
/// `jmp *slot(%rip)` it starts with, so its name is the name of the GOT slot
/// it jumps through, whatever the entry size or IBT layout.
fn dynamic_slots(data: &[u8]) -> (HashMap<u64, String>, HashMap<u64, GotSlot>) {
    let mut plt = HashMap::new();
    let mut got = HashMap::new();
    let Ok(file) = ElfFile64::<object::Endianness>::parse(data) else { return (plt, got) };
    let endian = file.endian();
    let Ok(symbols) = file.elf_section_table().symbols(endian, data, object::elf::SHT_DYNSYM) else {
        return (plt, got);
    };
    let name_of = |index: usize| -> Option<String> {
        let sym = symbols.symbol(object::SymbolIndex(index)).ok()?;
        let name = sym.name(endian, symbols.strings()).ok()?;
        (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
    };
    for section in [".rela.plt", ".rela.dyn"] {
        for (slot, r_type, sym, addend) in relas(&file, data, section) {
            match r_type {
                object::elf::R_X86_64_JUMP_SLOT | object::elf::R_X86_64_GLOB_DAT | object::elf::R_X86_64_64 => {
                    if let Some(name) = name_of(sym as usize) {
                        got.insert(slot, GotSlot::Named(name));
                    }
                }
                object::elf::R_X86_64_RELATIVE => {
                    got.insert(slot, GotSlot::Address(addend as u64));
                }
                _ => {}
            }
        }
    }
    for (name, entry) in [(".plt", 16), (".plt.sec", 16), (".plt.got", 8)] {
        let Some(section) = file.section_by_name(name) else { continue };
        let Ok(bytes) = section.data() else { continue };
        let entry =
            if name == ".plt.got" && section.elf_section_header().sh_entsize(endian) == 16 { 16 } else { entry };
        for (i, chunk) in bytes.chunks(entry).enumerate() {
            let at = section.address() + (i * entry) as u64;
            let Some(jmp) = chunk.windows(2).take(8).position(|w| w == [0xff, 0x25]) else { continue };
            let Some(disp) = chunk.get(jmp + 2..jmp + 6) else { continue };
            let disp = i32::from_le_bytes([disp[0], disp[1], disp[2], disp[3]]);
            let slot = (at + jmp as u64 + 6).wrapping_add(disp as i64 as u64);
            if let Some(GotSlot::Named(n)) = got.get(&slot) {
                plt.insert(at, n.clone());
            }
        }
    }
    (plt, got)
}

fn relas(file: &ElfFile64<'_, object::Endianness>, data: &[u8], name: &str) -> Vec<(u64, u32, u32, i64)> {
    let endian = file.endian();
    let Some(section) = file.section_by_name(name) else { return Vec::new() };
    let Ok(Some((relas, _))) = section.elf_section_header().rela(endian, data) else { return Vec::new() };
    relas
        .iter()
        .map(|r| (r.r_offset(endian), r.r_type(endian, false), r.r_sym(endian, false), r.r_addend(endian)))
        .collect()
}
