//! SIGTERM/SIGINT (stop after the transition in progress) and SIGHUP (reload
//! the configuration), as flags the daemon's loop reads between steps. The
//! handlers only store to atomics, which is all a signal handler may do safely.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_reload(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

fn install(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with a handler that only touches atomics;
    // SA_RESTART keeps the engine's waits and reads from failing with EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn install_all() -> std::io::Result<()> {
    install(libc::SIGTERM, on_stop)?;
    install(libc::SIGINT, on_stop)?;
    install(libc::SIGHUP, on_reload)
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// True once per SIGHUP received.
pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}
