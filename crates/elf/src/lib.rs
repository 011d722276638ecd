//! Reading targets: the ELF objects (executables and shared libraries) that
//! hotpatches apply to. Finds the GNU build-id, the loadable segments, the bytes
//! of a function, and resolves symbols from `.symtab`, a separate debug file
//! found by build-id, or `.dynsym`, telling apart file-local symbols that share a
//! name by the source file they come from.
//!
//! Pure: works on bytes the caller read. Every input is untrusted; malformed
//! files give an [`ElfError`], never a panic.

mod symbols;
mod target;

pub use symbols::{LookupError, Symbol, SymbolKind, SymbolSource, SymbolTable};
pub use target::{
    DEFAULT_DEBUG_ROOT, ElfError, LoadSegment, TargetElf, build_id_from_prefix, debug_file_path, debug_file_path_in,
};
