//! Whether a process that has just exec'd will map a target: its executable
//! is one (by build-id), or a library it will load at start is: `LD_PRELOAD`
//! and the executable's `DT_NEEDED` closure, each name resolved as ld.so
//! searches (`DT_RPATH` when there is no `DT_RUNPATH`, `LD_LIBRARY_PATH`,
//! `DT_RUNPATH`, `/etc/ld.so.cache`, the default directories), inside the
//! process's root. Libraries `dlopen`ed later are not seen here (the daemon's
//! rescans find them). What is read of each file (build-id, needed names,
//! search paths: a few pages) is cached by device, inode, size and mtime, so
//! a program started again costs a few `stat`s.
//!
//! A wrong guess costs little either way: "yes" for a process that maps no
//! target holds it for nothing at its entry (apply then finds no target), "no"
//! for one that does leaves it to be patched as a running process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
/// Bounds on what is read of a file (untrusted sizes) and on the closure.
const MAX_PHNUM: usize = 256;
const MAX_DYNAMIC: u64 = 64 * 1024;
const MAX_STRTAB: u64 = 1 << 20;
const MAX_OBJECTS: usize = 512;
/// Where ld.so looks last (Debian's multiarch directories first).
const DEFAULT_DIRS: [&str; 6] =
    ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];
const LD_CACHE: &str = "etc/ld.so.cache";
const LD_CACHE_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";

/// The target a new process will map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetMatch {
    /// The file, as the process's root sees it.
    pub path: String,
    pub build_id: String,
}

/// What matters of one ELF file here.
#[derive(Debug, Default)]
struct ObjectInfo {
    build_id: String,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
}

type FileKey = (u64, u64, u64, i64, i64);

/// Per-file facts, kept between calls (one per daemon).
#[derive(Debug, Default)]
pub struct NeededCache {
    files: HashMap<FileKey, Arc<ObjectInfo>>,
    /// `/etc/ld.so.cache` of one root: its key, and each name's paths.
    ld_cache: HashMap<PathBuf, (FileKey, HashMap<String, Vec<String>>)>,
}

/// One object of the closure and where `$ORIGIN` is for it.
struct Node {
    info: Arc<ObjectInfo>,
    origin: String,
}

impl NeededCache {
    /// The first target (by build-id, lowercase hex in `targets`) process
    /// `pid` maps or will map at start, if any.
    pub fn target_of(&mut self, pid: i32, targets: &HashSet<String>) -> Option<TargetMatch> {
        if targets.is_empty() {
            return None;
        }
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let exe_path = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?.to_string_lossy().into_owned();
        let exe = self.info(Path::new(&format!("/proc/{pid}/exe")))?;
        if targets.contains(&exe.build_id) {
            return Some(TargetMatch { path: exe_path, build_id: exe.build_id.clone() });
        }
        let env = Environment::of(pid);
        let exe = Node { info: exe, origin: parent(&exe_path) };
        let mut queue: VecDeque<(String, usize)> = env.preload.iter().map(|n| (n.clone(), 0)).collect();
        queue.extend(exe.info.needed.iter().map(|n| (n.clone(), 0)));
        let mut nodes = vec![exe];
        let mut seen: HashSet<String> = HashSet::new();
        while let Some((name, from)) = queue.pop_front() {
            if nodes.len() >= MAX_OBJECTS || !seen.insert(name.clone()) {
                continue;
            }
            let Some((path, info)) = self.resolve(&root, &name, &nodes[from], &nodes[0], &env) else { continue };
            if targets.contains(&info.build_id) {
                return Some(TargetMatch { path, build_id: info.build_id.clone() });
            }
            let at = nodes.len();
            queue.extend(info.needed.iter().map(|n| (n.clone(), at)));
            nodes.push(Node { origin: parent(&path), info });
        }
        None
    }

    /// The file `name` loads as, for an object `from` of a process whose
    /// executable is `exe`, in ld.so's order; the first x86-64 ELF file found.
    fn resolve(
        &mut self,
        root: &Path,
        name: &str,
        from: &Node,
        exe: &Node,
        env: &Environment,
    ) -> Option<(String, Arc<ObjectInfo>)> {
        if name.contains('/') {
            return self.info(&under(root, name)).map(|i| (name.to_owned(), i));
        }
        let mut dirs: Vec<String> = Vec::new();
        if from.info.runpath.is_empty() {
            dirs.extend(expand(&from.info.rpath, &from.origin));
            if exe.info.runpath.is_empty() {
                dirs.extend(expand(&exe.info.rpath, &exe.origin));
            }
        }
        dirs.extend(env.library_path.iter().cloned());
        dirs.extend(expand(&from.info.runpath, &from.origin));
        let candidates = dirs
            .into_iter()
            .map(|d| format!("{}/{name}", d.trim_end_matches('/')))
            .chain(self.ld_cache_paths(root, name))
            .chain(DEFAULT_DIRS.iter().map(|d| format!("{d}/{name}")));
        for path in candidates.collect::<Vec<_>>() {
            if let Some(info) = self.info(&under(root, &path)) {
                return Some((path, info));
            }
        }
        None
    }

    /// What matters of the ELF file at `path` (cached), if it is an x86-64 one.
    fn info(&mut self, path: &Path) -> Option<Arc<ObjectInfo>> {
        let file = std::fs::File::open(path).ok()?;
        let key = file_key(&file.metadata().ok()?);
        if let Some(info) = self.files.get(&key) {
            return Some(info.clone());
        }
        let info = Arc::new(read_object(&file)?);
        self.files.insert(key, info.clone());
        Some(info)
    }

    /// Paths `/etc/ld.so.cache` of `root` gives for `name` (x86-64 entries).
    fn ld_cache_paths(&mut self, root: &Path, name: &str) -> Vec<String> {
        let path = root.join(LD_CACHE);
        let Some(key) = std::fs::metadata(&path).ok().map(|m| file_key(&m)) else { return Vec::new() };
        if self.ld_cache.get(root).is_none_or(|(k, _)| *k != key) {
            let entries = std::fs::read(&path).map(|d| parse_ld_cache(&d)).unwrap_or_default();
            self.ld_cache.insert(root.to_path_buf(), (key, entries));
        }
        self.ld_cache.get(root).and_then(|(_, e)| e.get(name)).cloned().unwrap_or_default()
    }
}

/// What of the process's environment changes where ld.so looks.
struct Environment {
    library_path: Vec<String>,
    preload: Vec<String>,
}

impl Environment {
    fn of(pid: i32) -> Environment {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let var = |name: &[u8]| {
            environ
                .split(|&b| b == 0)
                .find_map(|kv| kv.strip_prefix(name))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let list = |v: Option<String>, seps: &[char]| -> Vec<String> {
            v.map(|v| v.split(seps).filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
        };
        Environment {
            library_path: list(var(b"LD_LIBRARY_PATH="), &[':', ';']),
            preload: list(var(b"LD_PRELOAD="), &[':', ' ']),
        }
    }
}

fn file_key(m: &std::fs::Metadata) -> FileKey {
    (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec())
}

/// `path` (absolute, as the process sees it) inside the process's root.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn parent(path: &str) -> String {
    path.rsplit_once('/').map(|(d, _)| if d.is_empty() { "/" } else { d }).unwrap_or(".").to_owned()
}

/// Search path entries with `$ORIGIN` expanded (`$LIB`/`$PLATFORM` as on Debian x86-64).
fn expand(dirs: &[String], origin: &str) -> Vec<String> {
    dirs.iter()
        .map(|d| {
            d.replace("${ORIGIN}", origin)
                .replace("$ORIGIN", origin)
                .replace("${LIB}", "lib/x86_64-linux-gnu")
                .replace("$LIB", "lib/x86_64-linux-gnu")
                .replace("${PLATFORM}", "x86_64")
                .replace("$PLATFORM", "x86_64")
        })
        .collect()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_at(file: &std::fs::File, offset: u64, len: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(len).ok()?];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

/// Build-id, needed names and search paths of a 64-bit little-endian x86-64
/// ELF file, read from its program headers and dynamic section only.
fn read_object(file: &std::fs::File) -> Option<ObjectInfo> {
    let size = file.metadata().ok()?.len();
    let head = read_at(file, 0, size.min(4096))?;
    if head.get(..6)? != b"\x7fELF\x02\x01" || u16_at(&head, 18)? != EM_X86_64 {
        return None;
    }
    let build_id = hotpatch_elf::build_id_from_prefix(&head).map(hex::encode).unwrap_or_default();
    let (phoff, phentsize, phnum) =
        (u64_at(&head, 0x20)?, u16_at(&head, 0x36)? as usize, u16_at(&head, 0x38)? as usize);
    if phentsize < 56 || phnum > MAX_PHNUM {
        return None;
    }
    let table = read_at(file, phoff, (phentsize * phnum) as u64)?;
    let headers: Vec<&[u8]> = table.chunks_exact(phentsize).collect();
    // (offset, vaddr, filesz) of each segment of a type.
    let segments = |kind: u32| {
        headers
            .iter()
            .filter(move |ph| u32_at(ph, 0) == Some(kind))
            .filter_map(|ph| Some((u64_at(ph, 8)?, u64_at(ph, 16)?, u64_at(ph, 32)?)))
    };
    let mut info = ObjectInfo { build_id, ..ObjectInfo::default() };
    let Some((dyn_off, _, dyn_size)) = segments(PT_DYNAMIC).next() else { return Some(info) };
    let dynamic = read_at(file, dyn_off, dyn_size.min(MAX_DYNAMIC))?;
    let entries: Vec<(u64, u64)> = dynamic
        .chunks_exact(16)
        .map_while(|e| Some((u64_at(e, 0)?, u64_at(e, 8)?)))
        .take_while(|&(t, _)| t != 0)
        .collect();
    let value = |tag: u64| entries.iter().find(|&&(t, _)| t == tag).map(|&(_, v)| v);
    let (strtab, strsz) = (value(DT_STRTAB)?, value(DT_STRSZ)?.min(MAX_STRTAB));
    // DT_STRTAB is an address: the file offset is found through PT_LOAD.
    let offset = segments(PT_LOAD)
        .find(|&(_, vaddr, filesz)| strtab >= vaddr && strtab < vaddr.saturating_add(filesz))
        .map(|(off, vaddr, _)| off + (strtab - vaddr))?;
    let strings = read_at(file, offset, strsz.min(size.saturating_sub(offset)))?;
    let string = |at: u64| {
        let rest = strings.get(usize::try_from(at).ok()?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let paths = |tag: u64| -> Vec<String> {
        entries
            .iter()
            .filter(|&&(t, _)| t == tag)
            .filter_map(|&(_, v)| string(v))
            .flat_map(|s| s.split(':').filter(|p| !p.is_empty()).map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    info.needed = entries.iter().filter(|&&(t, _)| t == DT_NEEDED).filter_map(|&(_, v)| string(v)).collect();
    info.rpath = paths(DT_RPATH);
    info.runpath = paths(DT_RUNPATH);
    Some(info)
}

/// Name → paths of the x86-64 entries of a glibc `ld.so.cache` (the new
/// format, alone or after the old one); empty if it cannot be read.
fn parse_ld_cache(data: &[u8]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let Some(h) = memchr::memmem::find(data, LD_CACHE_MAGIC) else { return out };
    let Some(nlibs) = u32_at(data, h + 20) else { return out };
    // String offsets count from the new format's header.
    let string = |at: u32| {
        let rest = data.get(h.checked_add(at as usize)?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
    };
    for i in 0..nlibs.min(1 << 20) as usize {
        let Some(e) = data.get(h + 48 + i * 24..h + 48 + i * 24 + 24) else { break };
        let (Some(flags), Some(key), Some(value)) = (u32_at(e, 0), u32_at(e, 4), u32_at(e, 8)) else { break };
        // FLAG_X8664_LIB64 in the flags' required bits.
        if flags & 0xff00 != 0x0300 {
            continue;
        }
        if let (Some(k), Some(v)) = (string(key), string(value)) {
            out.entry(k).or_default().push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_ld_cache_names_libc() {
        let data = std::fs::read("/etc/ld.so.cache").expect("ld.so.cache");
        let entries = parse_ld_cache(&data);
        let libc = entries.get("libc.so.6").expect("libc.so.6 in the cache");
        assert!(libc.iter().any(|p| p.ends_with("/libc.so.6") && Path::new(p).exists()), "{libc:?}");
        assert!(parse_ld_cache(b"glibc-ld.so.cache1.1\xff\xff").is_empty(), "truncated");
    }

    #[test]
    fn our_own_closure_reaches_libc_by_build_id() {
        let me = std::process::id() as i32;
        let maps = crate::procfs::maps(me).expect("maps");
        let libc = crate::modules::loaded_modules(me, &maps)
            .into_iter()
            .find(|m| m.file_name().starts_with("libc.so"))
            .expect("libc mapped");
        let mut cache = NeededCache::default();
        let targets = HashSet::from([libc.build_id_hex()]);
        let found = cache.target_of(me, &targets).expect("libc found through DT_NEEDED");
        assert_eq!(found.build_id, libc.build_id_hex());
        assert!(found.path.ends_with("libc.so.6"), "{}", found.path);
        assert_eq!(cache.target_of(me, &HashSet::from(["00".to_string()])), None);
    }

    #[test]
    fn origin_and_lib_are_expanded() {
        let dirs = vec!["$ORIGIN/../lib".to_string(), "${ORIGIN}/x".into(), "/opt/$LIB".into()];
        assert_eq!(expand(&dirs, "/srv/bin"), ["/srv/bin/../lib", "/srv/bin/x", "/opt/lib/x86_64-linux-gnu"]);
        assert_eq!(parent("/usr/bin/prog"), "/usr/bin");
        assert_eq!(parent("/prog"), "/");
    }
}
