//! Processes still running code of a file that was replaced or deleted on disk
//! since they mapped it (as `needrestart` finds them): only a restart makes
//! them run what is installed now.

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use hotpatch_engine::procfs::{self, Mapping};

const DELETED: &str = " (deleted)";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StaleFile {
    pub path: String,
    /// "deleted" or "replaced".
    pub change: &'static str,
    /// Build-id of the code the process runs, when it has one.
    pub running_build_id: Option<String>,
    /// Build-id of the file now at the path, when it was replaced by an ELF with one.
    pub disk_build_id: Option<String>,
}

/// The executable code a process maps from files, one entry per file.
fn code_files(maps: &[Mapping]) -> Vec<&Mapping> {
    let mut out: Vec<&Mapping> = Vec::new();
    for m in maps.iter().filter(|m| m.exec && m.inode != 0 && m.path.starts_with('/')) {
        // A patch region (memfd) is ours, not a file that was deleted.
        if m.path.starts_with("/memfd:") || out.iter().any(|o| o.inode == m.inode && o.path == m.path) {
            continue;
        }
        out.push(m);
    }
    out
}

fn build_id_of(path: &std::path::Path) -> Option<String> {
    let mut prefix = Vec::new();
    std::fs::File::open(path).ok()?.take(64 * 1024).read_to_end(&mut prefix).ok()?;
    hotpatch_elf::build_id_from_prefix(&prefix).map(hex::encode)
}

/// Files of `pid` whose code changed on disk since the process mapped them.
/// Paths are looked up through `/proc/PID/root`, the process's own view of
/// the file system (it may live in a container).
pub fn stale_files(pid: i32, maps: &[Mapping]) -> Vec<StaleFile> {
    let mut out = Vec::new();
    for m in code_files(maps) {
        let running_build_id = build_id_of(&m.map_file(pid));
        if let Some(path) = m.path.strip_suffix(DELETED) {
            let on_disk = format!("/proc/{pid}/root{path}");
            let disk_build_id = build_id_of(std::path::Path::new(&on_disk));
            let change = if disk_build_id.is_some() { "replaced" } else { "deleted" };
            out.push(StaleFile { path: path.to_string(), change, running_build_id, disk_build_id });
            continue;
        }
        let on_disk = format!("/proc/{pid}/root{}", m.path);
        match std::fs::metadata(&on_disk) {
            Ok(meta) if meta.ino() == m.inode => {}
            Ok(_) => {
                // Overlay file systems show another inode in maps than stat
                // does for the same file; the same build-id means the same code.
                let disk_build_id = build_id_of(std::path::Path::new(&on_disk));
                if running_build_id.is_none() || running_build_id != disk_build_id {
                    out.push(StaleFile { path: m.path.clone(), change: "replaced", running_build_id, disk_build_id });
                }
            }
            Err(_) => {
                out.push(StaleFile { path: m.path.clone(), change: "deleted", running_build_id, disk_build_id: None })
            }
        }
    }
    out
}

/// The systemd unit of a process, from its cgroup path (`…/nginx.service`).
pub fn unit_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.rsplit('/').find(|c| c.ends_with(".service") || c.ends_with(".scope")).map(str::to_string)
}

pub fn maps_of(pid: i32) -> Option<Vec<Mapping>> {
    procfs::maps(pid).ok()
}
