//! The payload linker: turns a hotpatch payload — a relocatable x86_64 ELF
//! object (`ET_REL`) holding replacement functions — into the bytes of a
//! patch region linked to run at a chosen address in the target process.
//!
//! This crate owns section placement, symbol resolution order and relocation
//! arithmetic. It is pure: bytes in, bytes out. It never touches a process
//! or a file; the engine chooses the address, resolves undefined symbols in
//! the target, maps the region and writes its header.
//!
//! Planning and linking are two steps because the engine needs the region
//! size to find room for it near the target, and only then knows the base:
//!
//! ```text
//! let plan = LinkPlan::new(payload, header_len)?;      // parse, check, lay out
//! let base = find_room_near_target(plan.region_size());
//! let image = plan.link(base, &mut |name| lookup(name))?;
//! ```
//!
//! # Region layout
//!
//! ```text
//! base  +-------------------------------+  Read       (engine's header)
//!       | header reserve (page-rounded) |
//!       +-------------------------------+  ReadExec
//!       | .text.*  (each at sh_addralign)|
//!       | call stubs                    |
//!       +-------------------------------+  Read
//!       | .rodata.*, .data.rel.ro.*     |
//!       | .eh_frame + 4-byte terminator |
//!       | GOT, TLS GOT entries and pairs |
//!       +-------------------------------+  ReadWrite
//!       | .data.*                       |
//!       | .bss.*, COMMON symbols        |
//! end   +-------------------------------+
//! ```
//!
//! Each part starts on a page so the engine can give it its own protection
//! with `mprotect`; empty parts are left out, and no part is ever both
//! writable and executable. `.data.rel.ro*` is writable in the object only
//! so that a dynamic linker can relocate it; everything is relocated here
//! before mapping, so it is placed read-only (as RELRO would).
//!
//! # Why call stubs and a GOT
//!
//! The payload is compiled as ordinary position-independent code, which
//! assumes everything it calls is within ±2 GiB (a 32-bit displacement).
//! The region is placed within ±2 GiB of the target module, so calls and
//! references into the target fit; but libraries such as libc are usually
//! mapped much further away. A call (`R_X86_64_PLT32`) whose target does not
//! fit goes instead to a 14-byte stub in the text part, `jmp *0(%rip)`
//! followed by the absolute destination, one per far symbol. Data references
//! compiled to go through the GOT (`R_X86_64_GOTPCREL` and its `X` variants)
//! get an 8-byte entry holding the symbol's absolute address, so they reach
//! anything in the address space. The GOT is filled at link time and is
//! read-only in the target. A stub slot is reserved for every undefined call
//! target at planning time, since whether it is far is only known at link
//! time; unused slots stay `int3`.
//!
//! # What is refused, what is dropped
//!
//! Refused with an error: anything but 64-bit little-endian x86_64 `ET_REL`;
//! thread-local sections (a running process cannot grow its TLS blocks; the
//! process's own TLS variables can be used, see [`TlsSymbol`]); TLS
//! descriptors (`-mtls-dialect=gnu2`); `.init_array`, `.fini_array`, `.ctors`, `.dtors`, `.init`,
//! `.fini` (the process has started, so constructors would never run);
//! IFUNC definitions; relocation types other than `R_X86_64_64`, `PC64`,
//! `PC32`, `PLT32`, `GOTPCREL`, `GOTPCRELX`, `REX_GOTPCRELX`, `32`, `32S`,
//! the TLS ones (`GOTTPOFF`, `TPOFF32`, `TPOFF64`, `TLSGD`, `TLSLD`,
//! `DTPOFF32`, `DTPOFF64`) and `NONE`; initial- or local-exec access to a
//! variable whose module is not in static TLS; section alignments above a
//! page; regions over [`MAX_REGION_SIZE`].
//!
//! # Thread-local variables
//!
//! TLS relocations name variables of the process; [`LinkPlan::link_with_tls`]
//! asks for each one's [`TlsSymbol`]. Initial exec gets a read-only GOT entry
//! holding the offset from the thread pointer; general and local dynamic get
//! a 16-byte `tls_index` pair {module id, offset} (offset 0 for local
//! dynamic) that the code hands to the process's own `__tls_get_addr`, so a
//! library in dynamic TLS works too. Code sequences are never rewritten.
//!
//! Not loaded: sections without `SHF_ALLOC` (debug info, `.comment`,
//! `.note.GNU-stack`, ...) and notes (`.note.gnu.property`). A relocation
//! that refers to a symbol in a section that is not loaded is an error.
//!
//! # Unwind tables
//!
//! `.eh_frame` is loaded read-only and relocated like any other section,
//! followed by a zero terminator, and its range is given in
//! [`LinkedImage::eh_frame`]. Nothing registers it in the target: until the
//! engine does (`__register_frame` in the target, or feeding the range to
//! its own stack unwinder), an unwinder cannot walk through replacement
//! code, so C++ exceptions must not propagate through a replaced function.
//! The LSDA (`.gcc_except_table`) and personality references are ordinary
//! sections and relocations and are loaded too.

mod error;
mod image;
mod input;
mod layout;
mod plan;
mod reloc;
mod tls;

pub use error::LinkError;
pub use image::{LinkedImage, Prot, Segment};
pub use layout::{MAX_REGION_SIZE, PAGE};
pub use plan::LinkPlan;
pub use tls::TlsSymbol;
