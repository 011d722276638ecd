//! Process events from the kernel's proc connector (netlink): each `exec`
//! names a process the daemon should look at soon, without waiting for the
//! next rescan. Forks need nothing: a child carries its parent's patches.
//! Where the connector is not available (no CAP_NET_ADMIN, kernel without
//! it), the periodic rescan alone finds new processes.

use std::sync::mpsc::{Receiver, Sender};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;

/// The subscription request: netlink header, connector header, the operation.
fn listen_message() -> Vec<u8> {
    let len = (NLMSG_HDR + CN_MSG + 4) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&std::process::id().to_ne_bytes());
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&[0u8; 8]); // seq, ack
    m.extend_from_slice(&4u16.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    m
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes)
}

/// The process (thread group) of an exec event in one datagram, if it is one.
pub fn exec_pid(datagram: &[u8]) -> Option<i32> {
    let event = NLMSG_HDR + CN_MSG;
    if u32_at(datagram, NLMSG_HDR)? != CN_IDX_PROC || u32_at(datagram, event)? != PROC_EVENT_EXEC {
        return None;
    }
    // proc_event: what, cpu, timestamp (16 bytes), then exec's pid and tgid.
    u32_at(datagram, event + 20).map(|tgid| tgid as i32)
}

fn subscribe() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; sockaddr_nl is zeroed then filled.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_CONNECTOR);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = CN_IDX_PROC;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        if libc::bind(fd, std::ptr::addr_of!(addr).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let msg = listen_message();
        if libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(owned)
    }
}

fn forward(fd: std::os::fd::OwnedFd, tx: Sender<i32>) {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: recv into a buffer we own, of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // ENOBUFS: events were dropped under load; the rescan finds those processes.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                continue;
            }
            return tracing::warn!(error = %e, "process events stopped; rescans go on");
        }
        if let Some(pid) = exec_pid(&buf[..n as usize])
            && tx.send(pid).is_err()
        {
            return;
        }
    }
}

/// Exec'd processes as they come; `None` where the connector cannot be used.
pub fn listen() -> Option<Receiver<i32>> {
    match subscribe() {
        Ok(fd) => {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new().name("proc-events".into()).spawn(move || forward(fd, tx)).ok()?;
            tracing::info!("listening to process events (proc connector)");
            Some(rx)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no process events (proc connector); relying on rescans");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(idx: u32, what: u32, tgid: u32) -> Vec<u8> {
        let mut d = vec![0u8; NLMSG_HDR];
        d.extend_from_slice(&idx.to_ne_bytes());
        d.extend_from_slice(&[0u8; CN_MSG - 4]);
        d.extend_from_slice(&what.to_ne_bytes());
        d.extend_from_slice(&[0u8; 12]); // cpu, timestamp
        d.extend_from_slice(&77u32.to_ne_bytes()); // thread that exec'd
        d.extend_from_slice(&tgid.to_ne_bytes());
        d
    }

    #[test]
    fn exec_events_name_the_process_and_others_are_ignored() {
        assert_eq!(exec_pid(&event(CN_IDX_PROC, PROC_EVENT_EXEC, 1234)), Some(1234));
        assert_eq!(exec_pid(&event(CN_IDX_PROC, 1, 1234)), None, "fork");
        assert_eq!(exec_pid(&event(9, PROC_EVENT_EXEC, 1234)), None, "another connector");
        assert_eq!(exec_pid(&event(CN_IDX_PROC, PROC_EVENT_EXEC, 1)[..50]), None, "truncated");
        assert_eq!(listen_message().len(), NLMSG_HDR + CN_MSG + 4);
    }
}
