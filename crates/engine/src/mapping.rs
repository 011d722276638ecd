//! Putting a linked patch region into the target, and taking it out again,
//! through syscalls run in a borrowed thread.

use crate::error::EngineError;
use crate::inject::{Injector, check};
use crate::procfs::{Mapping, ProcessMemory};
use crate::region::MEMFD_PREFIX;
use hotpatch_link::{LinkedImage, Prot};
use std::os::unix::fs::FileExt;

const MFD_CLOEXEC: u64 = 0x1;
const MFD_ALLOW_SEALING: u64 = 0x2;
/// Asks for an executable memfd where `vm.memfd_noexec` would default to not.
const MFD_EXEC: u64 = 0x10;

/// Maps `image` at `image.base` in the target as `/memfd:hotpatch:<patch_id>`:
/// read+execute from a sealed memfd, then each segment narrowed to its own
/// protection. Never writable and executable at once. On failure nothing of
/// it remains in the target.
pub fn map_region(
    pid: i32,
    maps: &[Mapping],
    mem: &ProcessMemory,
    image: &LinkedImage,
    header_len: u64,
    patch_id: &str,
) -> Result<(), EngineError> {
    let mut inj = Injector::attach(pid, maps, mem)?;
    close_leftover_memfds(pid, &mut inj);
    let mut name = format!("{MEMFD_PREFIX}{patch_id}").into_bytes();
    name.push(0);
    let name_addr = inj.scratch(&name)?;
    let mut ret =
        inj.syscall(libc::SYS_memfd_create, [name_addr, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC, 0, 0, 0, 0])?;
    if ret == -(libc::EINVAL as i64) {
        // Kernels before 6.3 do not know MFD_EXEC.
        ret = inj.syscall(libc::SYS_memfd_create, [name_addr, MFD_CLOEXEC | MFD_ALLOW_SEALING, 0, 0, 0, 0])?;
    }
    let fd = check(pid, "memfd_create", ret)?;
    let result = fill_and_map(pid, &mut inj, fd, image, header_len);
    let closed = inj.syscall(libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
    if result.is_err() {
        // Best effort: the mapping may or may not exist at this point.
        let _ = inj.syscall(libc::SYS_munmap, [image.base, image.bytes.len() as u64, 0, 0, 0, 0]);
    }
    let finished = inj.finish();
    result?;
    check(pid, "close", closed?)?;
    finished
}

/// Descriptors open on a patch region's memfd. An apply closes its own as
/// soon as the region is mapped, so one found before an apply starts was left
/// by a tracer killed between memfd_create and close: closed here (best
/// effort; the region's mapping, if any, does not need it).
fn close_leftover_memfds(pid: i32, inj: &mut Injector<'_>) {
    for fd in leftover_memfds(pid, std::time::Duration::ZERO) {
        match inj.syscall(libc::SYS_close, [fd, 0, 0, 0, 0, 0]) {
            Ok(0) => tracing::info!(pid, fd, "closed a patch region memfd left by a killed apply"),
            Ok(ret) => tracing::warn!(pid, fd, ret, "closing a leftover patch region memfd failed"),
            Err(e) => tracing::warn!(pid, fd, error = %e, "closing a leftover patch region memfd failed"),
        }
    }
}

/// Descriptors of `pid` open on a patch region's memfd last written at least
/// `min_age` ago (an apply in progress writes its memfd just before mapping
/// and closing it).
pub fn leftover_memfds(pid: i32, min_age: std::time::Duration) -> Vec<u64> {
    let dir = format!("{}/fd", crate::procfs::proc_dir(pid));
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let marker = format!("/memfd:{MEMFD_PREFIX}");
    let old_enough = |path: &std::path::Path| {
        let written = std::fs::metadata(path).and_then(|m| m.modified());
        written.is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= min_age)) || min_age.is_zero()
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            let ours = target.to_string_lossy().starts_with(&marker) && old_enough(&e.path());
            ours.then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// Closes descriptors `fds` in the process (leftover region memfds, from
/// [`leftover_memfds`]), through a borrowed thread; returns those closed.
pub fn close_memfds(pid: i32, maps: &[Mapping], mem: &ProcessMemory, fds: &[u64]) -> Result<Vec<u64>, EngineError> {
    let mut inj = Injector::attach(pid, maps, mem)?;
    let mut closed = Vec::new();
    let mut failure = None;
    for &fd in fds {
        match inj.syscall(libc::SYS_close, [fd, 0, 0, 0, 0, 0]).and_then(|ret| check(pid, "close", ret)) {
            Ok(_) => closed.push(fd),
            Err(e) => failure = Some(e),
        }
    }
    inj.finish()?;
    failure.map_or(Ok(closed), Err)
}

fn fill_and_map(
    pid: i32,
    inj: &mut Injector<'_>,
    fd: u64,
    image: &LinkedImage,
    header_len: u64,
) -> Result<(), EngineError> {
    let size = image.bytes.len() as u64;
    // Our own handle on the target's memfd, to fill it without running code there.
    let path = format!("{}/fd/{fd}", crate::procfs::proc_dir(pid));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::io(format!("open {path}"), e))?;
    file.set_len(size).map_err(|e| EngineError::io("size patch region", e))?;
    file.write_all_at(&image.bytes, 0).map_err(|e| EngineError::io("fill patch region", e))?;
    // Sealed: nobody holding the memfd can change the code after this.
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(EngineError::io("seal patch region", std::io::Error::last_os_error()));
    }
    drop(file);

    let prot_rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE) as u64;
    let ret = inj.syscall(libc::SYS_mmap, [image.base, size, prot_rx, flags, fd, 0])?;
    let got = check(pid, "mmap", ret).map_err(|e| match ret {
        r if r == -(libc::EEXIST as i64) => {
            EngineError::NoRoom { size, target: "the chosen address (taken meanwhile)".into() }
        }
        _ => e,
    })?;
    if got != image.base {
        let _ = inj.syscall(libc::SYS_munmap, [got, size, 0, 0, 0, 0]);
        return Err(EngineError::Inject {
            pid,
            call: "mmap",
            detail: format!("mapped at 0x{got:x} instead of 0x{:x}", image.base),
        });
    }
    let mut protect = |start: u64, len: u64, prot: i32| -> Result<(), EngineError> {
        if len == 0 {
            return Ok(());
        }
        let r = inj.syscall(libc::SYS_mprotect, [image.base + start, len, prot as u64, 0, 0, 0])?;
        check(pid, "mprotect", r).map(|_| ())
    };
    protect(0, header_len, libc::PROT_READ)?;
    for seg in &image.segments {
        match seg.prot {
            Prot::ReadExec => {}
            Prot::Read => protect(seg.offset, seg.len, libc::PROT_READ)?,
            Prot::ReadWrite => protect(seg.offset, seg.len, libc::PROT_READ | libc::PROT_WRITE)?,
        }
    }
    Ok(())
}

/// Unmaps a region from the target.
pub fn unmap_region(pid: i32, maps: &[Mapping], mem: &ProcessMemory, start: u64, size: u64) -> Result<(), EngineError> {
    let mut inj = Injector::attach(pid, maps, mem)?;
    let ret = inj.syscall(libc::SYS_munmap, [start, size, 0, 0, 0, 0]);
    let finished = inj.finish();
    check(pid, "munmap", ret?)?;
    finished
}
