//! One ELF file's identity and layout.

use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSection};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("unsupported ELF file: {0}")]
    Unsupported(String),
    #[error("malformed ELF file: {0}")]
    Malformed(String),
    #[error("the file has no GNU build-id note (link with --build-id)")]
    NoBuildId,
}

/// A loadable segment (`PT_LOAD`) as the file describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
    pub writable: bool,
}

/// A parsed 64-bit little-endian ELF executable or shared library.
pub struct TargetElf<'data> {
    data: &'data [u8],
    file: ElfFile64<'data, Endianness>,
}

impl<'data> TargetElf<'data> {
    pub fn parse(data: &'data [u8]) -> Result<TargetElf<'data>, ElfError> {
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        let file = ElfFile64::<Endianness>::parse(data).map_err(|e| ElfError::Malformed(e.to_string()))?;
        if file.endian() != Endianness::Little {
            return Err(ElfError::Unsupported("big-endian".into()));
        }
        Ok(TargetElf { data, file })
    }

    pub fn data(&self) -> &'data [u8] {
        self.data
    }

    pub(crate) fn file(&self) -> &ElfFile64<'data, Endianness> {
        &self.file
    }

    pub fn e_machine(&self) -> u16 {
        self.file.elf_header().e_machine.get(self.file.endian())
    }

    pub fn e_type(&self) -> u16 {
        self.file.elf_header().e_type.get(self.file.endian())
    }

    /// The entry point (`e_entry`): where an executable starts (`_start`).
    pub fn entry(&self) -> u64 {
        self.file.elf_header().e_entry.get(self.file.endian())
    }

    /// Executables linked at a fixed address (`ET_EXEC`) are loaded with bias 0.
    pub fn is_position_independent(&self) -> bool {
        self.e_type() == object::elf::ET_DYN
    }

    /// The GNU build-id, if the file has one.
    pub fn build_id(&self) -> Result<Option<&'data [u8]>, ElfError> {
        self.file.build_id().map_err(|e| ElfError::Malformed(format!("build-id note: {e}")))
    }

    pub fn build_id_hex(&self) -> Result<String, ElfError> {
        self.build_id()?.map(hex::encode).ok_or(ElfError::NoBuildId)
    }

    pub fn load_segments(&self) -> Vec<LoadSegment> {
        let endian = self.file.endian();
        self.file
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
            .map(|ph| {
                let flags = ph.p_flags(endian);
                LoadSegment {
                    vaddr: ph.p_vaddr(endian),
                    memsz: ph.p_memsz(endian),
                    offset: ph.p_offset(endian),
                    filesz: ph.p_filesz(endian),
                    executable: flags & object::elf::PF_X != 0,
                    writable: flags & object::elf::PF_W != 0,
                }
            })
            .collect()
    }

    /// The file bytes backing `len` bytes at link-time address `vaddr`, if they
    /// are all inside one segment's file image.
    pub fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&'data [u8]> {
        self.load_segments().into_iter().find_map(|seg| {
            let rel = vaddr.checked_sub(seg.vaddr)?;
            if rel.checked_add(len)? > seg.filesz {
                return None;
            }
            let start = usize::try_from(seg.offset.checked_add(rel)?).ok()?;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            self.data.get(start..end)
        })
    }

    /// Whether `[vaddr, vaddr+len)` lies in an executable segment.
    pub fn is_executable_range(&self, vaddr: u64, len: u64) -> bool {
        self.load_segments().iter().any(|seg| {
            seg.executable
                && vaddr >= seg.vaddr
                && vaddr.checked_add(len).is_some_and(|end| end <= seg.vaddr.saturating_add(seg.memsz))
        })
    }

    /// Raw contents of a named section, if present and stored in the file.
    pub fn section_data(&self, name: &str) -> Option<(u64, &'data [u8])> {
        let section = self.file.section_by_name(name)?;
        let data = section.data().ok()?;
        Some((section.address(), data))
    }

    pub fn has_symtab(&self) -> bool {
        self.file.section_by_name(".symtab").is_some()
    }
}

/// Where distributions install separate debug files.
pub const DEFAULT_DEBUG_ROOT: &str = "/usr/lib/debug";

/// Where distributions install a separate debug file for a build-id:
/// `/usr/lib/debug/.build-id/ab/cdef....debug`.
pub fn debug_file_path(build_id: &[u8]) -> Option<PathBuf> {
    debug_file_path_in(Path::new(DEFAULT_DEBUG_ROOT), build_id)
}

/// The debug file for a build-id under the debug root `root`:
/// `ROOT/.build-id/ab/cdef....debug` (the layout gdb and debuginfod use).
pub fn debug_file_path_in(root: &Path, build_id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = build_id.split_first()?;
    if rest.is_empty() {
        return None;
    }
    Some(root.join(".build-id").join(format!("{first:02x}")).join(format!("{}.debug", hex::encode(rest))))
}

/// The GNU build-id from the first bytes of an ELF file, when its program
/// headers and notes lie within them (they do in practice: the linker puts
/// them in the first page). Lets a scan identify every mapped file without
/// reading whole libraries.
pub fn build_id_from_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    use object::read::elf::FileHeader;
    let header = object::elf::FileHeader64::<Endianness>::parse(prefix).ok()?;
    let endian = header.endian().ok()?;
    for ph in header.program_headers(endian, prefix).ok()? {
        if ph.p_type(endian) != object::elf::PT_NOTE {
            continue;
        }
        let Ok(Some(mut notes)) = ph.notes(endian, prefix) else { continue };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == object::elf::ELF_NOTE_GNU && note.n_type(endian) == object::elf::NT_GNU_BUILD_ID {
                return Some(note.desc().to_vec());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_file_paths_follow_the_build_id_layout() {
        let id = [0xab, 0xcd, 0xef, 0x01];
        assert_eq!(debug_file_path(&id), Some(PathBuf::from("/usr/lib/debug/.build-id/ab/cdef01.debug")));
        assert_eq!(
            debug_file_path_in(Path::new("/tmp/dbg"), &id),
            Some(PathBuf::from("/tmp/dbg/.build-id/ab/cdef01.debug"))
        );
        assert_eq!(debug_file_path(&[0xab]), None);
        assert_eq!(debug_file_path(&[]), None);
    }
}
