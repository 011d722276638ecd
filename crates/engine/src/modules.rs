//! The ELF objects a process maps (its executable and shared libraries), with
//! where each one is loaded.

use crate::error::EngineError;
use crate::procfs::Mapping;
use std::io::Read;
use std::path::PathBuf;

/// One ELF object mapped into a process.
#[derive(Debug, Clone)]
pub struct LoadedModule {
    pub path: String,
    /// `/proc/PID/map_files/...` of the mapping at file offset 0: the very file
    /// the process mapped, even if it was replaced on disk since.
    pub file: PathBuf,
    pub inode: u64,
    /// Lowest and highest address of any of its mappings.
    pub start: u64,
    pub end: u64,
    pub build_id: Option<Vec<u8>>,
    /// This module's mappings, in address order.
    pub mappings: Vec<Mapping>,
}

impl LoadedModule {
    pub fn build_id_hex(&self) -> String {
        self.build_id.as_ref().map(hex::encode).unwrap_or_default()
    }

    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    pub fn read_file(&self) -> Result<Vec<u8>, EngineError> {
        std::fs::read(&self.file).map_err(|e| EngineError::io(format!("read {}", self.path), e))
    }

    /// Load bias: run-time address minus link-time address, from the mapping
    /// that holds the first loadable segment.
    pub fn bias(&self, elf: &hotpatch_elf::TargetElf<'_>) -> Option<u64> {
        let first = elf.load_segments().into_iter().next()?;
        let page_off = first.offset & !0xfff;
        let map = self.mappings.iter().find(|m| m.offset == page_off)?;
        Some(map.start.wrapping_sub(first.vaddr & !0xfff))
    }
}

fn read_prefix(path: &PathBuf, len: usize) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Groups file-backed mappings by file and identifies each ELF by build-id.
pub fn loaded_modules(pid: i32, maps: &[Mapping]) -> Vec<LoadedModule> {
    let mut modules: Vec<LoadedModule> = Vec::new();
    for m in maps.iter().filter(|m| m.inode != 0 && m.path.starts_with('/')) {
        if let Some(module) = modules.iter_mut().find(|x| x.inode == m.inode && x.path == m.path) {
            module.start = module.start.min(m.start);
            module.end = module.end.max(m.end);
            module.mappings.push(m.clone());
            continue;
        }
        if m.offset != 0 {
            continue;
        }
        let file = m.map_file(pid);
        let Some(prefix) = read_prefix(&file, 64 * 1024) else { continue };
        if prefix.len() < 4 || &prefix[..4] != b"\x7fELF" {
            continue;
        }
        let build_id = hotpatch_elf::build_id_from_prefix(&prefix).or_else(|| {
            let data = std::fs::read(&file).ok()?;
            let elf = hotpatch_elf::TargetElf::parse(&data).ok()?;
            elf.build_id().ok()?.map(<[u8]>::to_vec)
        });
        modules.push(LoadedModule {
            path: m.path.clone(),
            file,
            inode: m.inode,
            start: m.start,
            end: m.end,
            build_id,
            mappings: vec![m.clone()],
        });
    }
    modules
}
