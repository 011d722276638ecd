//! One machine-wide lock between the commands that change processes: every
//! apply (the daemon's, `hotpatch apply`) holds it shared while it runs, and
//! `hotpatch repair` holds it exclusive, so a repair never mistakes a region
//! an apply has mapped but not yet switched for a crash's leftover.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

/// Under /run: gone at reboot, when no apply can be in progress.
pub const LOCK_PATH: &str = "/run/hotpatch.lock";

/// Held until dropped (closing the file releases the lock).
pub struct MachineLock {
    _file: File,
}

fn take(operation: libc::c_int) -> std::io::Result<MachineLock> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(LOCK_PATH)?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(MachineLock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// For an apply; `None` (with a warning) when the lock file cannot be used,
/// e.g. without root, where the apply itself will be refused anyway.
pub fn shared() -> Option<MachineLock> {
    take(libc::LOCK_SH).map_err(|e| tracing::warn!(error = %e, path = LOCK_PATH, "cannot take the apply lock")).ok()
}

/// For a repair: waits for applies in progress to finish.
pub fn exclusive() -> std::io::Result<MachineLock> {
    take(libc::LOCK_EX)
}
