//! Symbol resolution for a target, from every source a machine may have.

use crate::TargetElf;
use object::read::elf::Sym;
use object::{Object, ObjectSymbol, SymbolSection};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolKind {
    Function,
    /// `STT_GNU_IFUNC`: the symbol's address is a resolver, not the function.
    IndirectFunction,
    Object,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolSource {
    Symtab,
    DebugFile,
    Dynsym,
}

/// A defined symbol of a target, at its link-time address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    /// The source file of a file-local symbol (from the preceding `STT_FILE`).
    pub file: Option<String>,
    pub address: u64,
    pub size: u64,
    pub kind: SymbolKind,
    pub local: bool,
    pub source: SymbolSource,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("symbol {0} not found in the target (.symtab, debug file, .dynsym)")]
    NotFound(String),
    #[error("symbol {name} is ambiguous: defined in {candidates}; name the source file as FILE:{name}")]
    Ambiguous { name: String, candidates: String },
    #[error("symbol {name} is not defined in source file {file}; it is defined in {candidates}")]
    WrongFile { name: String, file: String, candidates: String },
}

/// All defined symbols of a target. Symbols from `.symtab` (or the debug file)
/// take precedence over `.dynsym`, which only has exported names.
#[derive(Debug, Default, Clone)]
pub struct SymbolTable {
    symbols: Vec<Symbol>,
    by_name: HashMap<String, Vec<usize>>,
}

fn kind_of(st_type: u8) -> SymbolKind {
    match st_type {
        object::elf::STT_FUNC => SymbolKind::Function,
        object::elf::STT_GNU_IFUNC => SymbolKind::IndirectFunction,
        object::elf::STT_OBJECT | object::elf::STT_TLS => SymbolKind::Object,
        _ => SymbolKind::Other,
    }
}

impl SymbolTable {
    /// Symbols of `elf`: its `.symtab` if present, otherwise those of `debug`
    /// (the separate debug file), and always its `.dynsym`.
    pub fn from_target(elf: &TargetElf<'_>, debug: Option<&TargetElf<'_>>) -> SymbolTable {
        let mut table = SymbolTable::default();
        if elf.has_symtab() {
            table.add_symtab(elf, SymbolSource::Symtab);
        } else if let Some(debug) = debug {
            table.add_symtab(debug, SymbolSource::DebugFile);
        }
        table.add_dynsym(elf);
        table
    }

    fn push(&mut self, sym: Symbol) {
        self.by_name.entry(sym.name.clone()).or_default().push(self.symbols.len());
        self.symbols.push(sym);
    }

    fn add_symtab(&mut self, elf: &TargetElf<'_>, source: SymbolSource) {
        let endian = elf.file().endian();
        let mut current_file: Option<String> = None;
        for sym in elf.file().symbols() {
            let raw = sym.elf_symbol();
            let st_type = raw.st_type();
            if st_type == object::elf::STT_FILE {
                current_file = sym.name().ok().filter(|n| !n.is_empty()).map(str::to_owned);
                continue;
            }
            if !matches!(sym.section(), SymbolSection::Section(_) | SymbolSection::Absolute) {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() || st_type == object::elf::STT_SECTION {
                continue;
            }
            let local = raw.st_bind() == object::elf::STB_LOCAL;
            self.push(Symbol {
                name: name.to_owned(),
                file: if local { current_file.clone() } else { None },
                address: raw.st_value(endian),
                size: raw.st_size(endian),
                kind: kind_of(st_type),
                local,
                source,
            });
        }
    }

    fn add_dynsym(&mut self, elf: &TargetElf<'_>) {
        let endian = elf.file().endian();
        for sym in elf.file().dynamic_symbols() {
            if !matches!(sym.section(), SymbolSection::Section(_)) {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() {
                continue;
            }
            let raw = sym.elf_symbol();
            let address = raw.st_value(endian);
            // .symtab already lists the exported names; keep .dynsym for stripped files.
            if self.by_name.get(name).is_some_and(|ix| ix.iter().any(|&i| self.symbols[i].address == address)) {
                continue;
            }
            self.push(Symbol {
                name: name.to_owned(),
                file: None,
                address,
                size: raw.st_size(endian),
                kind: kind_of(raw.st_type()),
                local: false,
                source: SymbolSource::Dynsym,
            });
        }
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.symbols.iter()
    }

    /// Every symbol with this name.
    pub fn named(&self, name: &str) -> Vec<&Symbol> {
        self.by_name.get(name).map(|ix| ix.iter().map(|&i| &self.symbols[i]).collect()).unwrap_or_default()
    }

    /// One symbol by name, and by source file when the name is not unique.
    /// Aliases (several names at one address) count as one.
    pub fn lookup(&self, name: &str, file: Option<&str>) -> Result<&Symbol, LookupError> {
        let all = self.named(name);
        if all.is_empty() {
            return Err(LookupError::NotFound(name.to_owned()));
        }
        let describe = |syms: &[&Symbol]| {
            syms.iter()
                .map(|s| match &s.file {
                    Some(f) => format!("{f} (0x{:x})", s.address),
                    None => format!("global (0x{:x})", s.address),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let chosen: Vec<&Symbol> = match file {
            Some(file) => {
                let same_file: Vec<&Symbol> =
                    all.iter().copied().filter(|s| s.file.as_deref().is_some_and(|f| file_matches(f, file))).collect();
                if same_file.is_empty() {
                    return Err(LookupError::WrongFile {
                        name: name.into(),
                        file: file.into(),
                        candidates: describe(&all),
                    });
                }
                same_file
            }
            None => {
                // A global definition wins over file-local ones of the same name,
                // as it does for the static linker.
                let globals: Vec<&Symbol> = all.iter().copied().filter(|s| !s.local).collect();
                if globals.is_empty() { all.clone() } else { globals }
            }
        };
        let first = chosen[0];
        if chosen.iter().all(|s| s.address == first.address) {
            Ok(first)
        } else {
            Err(LookupError::Ambiguous { name: name.into(), candidates: describe(&chosen) })
        }
    }

    /// Whether `lookup(name, None)` would need a file to be unique.
    pub fn needs_file(&self, name: &str) -> bool {
        matches!(self.lookup(name, None), Err(LookupError::Ambiguous { .. }))
    }
}

/// `STT_FILE` names are what the compiler was given (`src/auth.c` or `auth.c`);
/// accept either the full name or its last component.
fn file_matches(recorded: &str, wanted: &str) -> bool {
    recorded == wanted || recorded.rsplit('/').next() == Some(wanted) || wanted.rsplit('/').next() == Some(recorded)
}
