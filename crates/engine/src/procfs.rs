//! What `/proc` says about a process: its threads, its mappings, its memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub private: bool,
    pub offset: u64,
    pub inode: u64,
    pub path: String,
}

impl Mapping {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }

    /// The mapped file itself, even if it was deleted or replaced on disk since.
    /// `/proc/PID/map_files` goes through the main thread; once it has exited
    /// (pthread_exit) only the path remains, seen from the process's root.
    pub fn map_file(&self, pid: i32) -> PathBuf {
        let main = format!("/proc/{pid}");
        let dir = proc_dir(pid);
        if dir == main {
            return PathBuf::from(format!("{main}/map_files/{:x}-{:x}", self.start, self.end));
        }
        PathBuf::from(format!("{dir}/root{}", self.path))
    }
}

/// Parses the text of `/proc/PID/maps`; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    if perms.len() < 4 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        private: perms[3] == b'p',
        offset,
        inode,
        path,
    })
}

/// Where the process's memory, mappings and descriptors are seen in `/proc`:
/// `/proc/PID`, or, once the main thread has exited (pthread_exit: a zombie
/// that no longer holds them), `/proc/PID/task/TID` of a thread still running.
pub fn proc_dir(pid: i32) -> String {
    let main = format!("/proc/{pid}");
    if !thread_ended(pid, pid) {
        return main;
    }
    match tasks(pid) {
        Ok(tids) => match tids.into_iter().find(|&tid| !thread_ended(pid, tid)) {
            Some(tid) => format!("/proc/{pid}/task/{tid}"),
            None => main,
        },
        Err(_) => main,
    }
}

pub fn maps(pid: i32) -> io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!("{}/maps", proc_dir(pid)))?))
}

/// Thread ids of a process, in the order the kernel lists them.
pub fn tasks(pid: i32) -> io::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim_end().to_owned()).unwrap_or_default()
}

/// The pid tracing this process (`TracerPid` in `/proc/PID/status`), 0 if none.
pub fn tracer_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("TracerPid:")).and_then(|v| v.trim().parse().ok())
}

/// One field of `/proc/PID/task/TID/status`, None if the thread is gone.
fn thread_status_field(pid: i32, tid: i32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned())
}

/// The pid tracing this one thread, 0 if none.
pub fn thread_tracer(pid: i32, tid: i32) -> Option<i32> {
    thread_status_field(pid, tid, "TracerPid:")?.parse().ok()
}

/// Whether a thread has ended: no longer listed, or a zombie / dead task
/// still listed for a moment. Such a thread cannot be attached to (`EPERM`).
pub fn thread_ended(pid: i32, tid: i32) -> bool {
    match thread_status_field(pid, tid, "State:") {
        None => true,
        Some(state) => state.starts_with('Z') || state.starts_with('X'),
    }
}

/// Whether the whole process has ended (or is ending: its main thread is gone
/// and no other thread is left running).
pub fn process_ended(pid: i32) -> bool {
    match tasks(pid) {
        Err(_) => true,
        Ok(tids) => tids.iter().all(|&tid| thread_ended(pid, tid)),
    }
}

/// Whether the process is gone or on its way out: no thread left running, a
/// `SIGKILL` pending (how `exit_group` and a fatal signal take every thread
/// down), or a running thread whose memory is already released (its status
/// shows no `VmSize`). A main thread that alone has exited (pthread_exit) is
/// not the process exiting.
pub fn process_exiting(pid: i32) -> bool {
    let field = |status: &str, name: &str| -> Option<String> {
        status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned())
    };
    let sigkill_pending = |status: &str| {
        ["SigPnd:", "ShdPnd:"].iter().any(|name| {
            field(status, name).and_then(|v| u64::from_str_radix(&v, 16).ok()).is_some_and(|mask| mask & (1 << 8) != 0)
        })
    };
    let Ok(tids) = tasks(pid) else { return true };
    let mut any_running = false;
    for tid in tids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else { continue };
        if sigkill_pending(&status) {
            return true;
        }
        let state = field(&status, "State:").unwrap_or_default();
        if state.starts_with('Z') || state.starts_with('X') {
            continue;
        }
        if field(&status, "VmSize:").is_none() {
            return true;
        }
        any_running = true;
    }
    !any_running
}

/// The real parent of a process (`PPid`), whatever traces it.
pub fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

/// Every process id currently in `/proc`.
pub fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<i32> =
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&p: &i32| p > 0).collect();
    pids.sort_unstable();
    pids
}

/// The process's memory through `/proc/PID/mem`. Writes go through even to
/// read-only text pages (the kernel copies the page for this process only).
pub struct ProcessMemory {
    file: File,
}

impl ProcessMemory {
    pub fn open(pid: i32, write: bool) -> io::Result<ProcessMemory> {
        let file = std::fs::OpenOptions::new().read(true).write(write).open(format!("{}/mem", proc_dir(pid)))?;
        Ok(ProcessMemory { file })
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    pub fn read_vec(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let text = "55d0c0a00000-55d0c0a01000 r-xp 00001000 fe:01 1234    /usr/bin/svc\n\
                    7f0000000000-7f0000002000 r-xp 00000000 00:01 77 /memfd:hotpatch:p1 (deleted)\n\
                    7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n\
                    garbage\n";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].start, 0x55d0c0a00000);
        assert!(maps[0].exec && !maps[0].write && maps[0].private);
        assert_eq!(maps[0].offset, 0x1000);
        assert_eq!(maps[0].path, "/usr/bin/svc");
        assert_eq!(maps[1].path, "/memfd:hotpatch:p1 (deleted)");
        assert_eq!(maps[2].path, "[stack]");
        assert_eq!(maps[2].inode, 0);
    }
}
