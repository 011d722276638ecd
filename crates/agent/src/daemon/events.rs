//! Process events from the kernel's proc connector (netlink): each `exec`
//! names a process the daemon looks at at once, without waiting for the
//! next rescan. Forks need nothing: a child carries its parent's patches.
//! Where the connector is not available (no CAP_NET_ADMIN, kernel without
//! it), the periodic rescan alone finds new processes.
//!
//! Patch at exec: a process that will map a target (its executable, or a
//! library of its `DT_NEEDED` closure: `hotpatch_engine::startup::needed`)
//! is caught on its way to its entry point by a thread of its own
//! (`startup::catch`, bounded by [`CATCH_DEADLINE`]) and handed to the
//! daemon's loop held there, untraced, in a sleep that ends by itself; the
//! loop applies its jobs and releases it, so that no code of the program
//! runs unpatched. A process already past its entry is looked at at once;
//! one that maps no target by its files (it may `dlopen` one) once its
//! loader had its moment ([`super::LOADER_SETTLE`]). Each caught process's
//! delay from the kernel's exec to patched is logged
//! (`exec_to_patched_us`, `held` = nothing of its own ran before).

use std::collections::HashSet;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotpatch_engine::startup::{self, Caught, Held, NeededCache};

use super::Daemon;
use crate::journal::start_time;

/// How long a new process is waited for on its way to its entry point (its
/// libraries' constructors run meanwhile); past it, it is let go and patched
/// as a running process.
const CATCH_DEADLINE: Duration = Duration::from_secs(1);

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

/// The process (thread group) of an exec event in one datagram, if it is
/// one, and when the kernel sent it (`CLOCK_MONOTONIC`, ns).
fn exec_event(datagram: &[u8]) -> Option<(i32, u64)> {
    let event = NLMSG_HDR + CN_MSG;
    if u32_at(datagram, NLMSG_HDR)? != CN_IDX_PROC || u32_at(datagram, event)? != PROC_EVENT_EXEC {
        return None;
    }
    // proc_event: what, cpu, timestamp (16 bytes), then exec's pid and tgid.
    let at = datagram.get(event + 8..event + 16)?.try_into().ok().map(u64::from_ne_bytes)?;
    u32_at(datagram, event + 20).map(|tgid| (tgid as i32, at))
}

/// Now on the clock of the kernel's event timestamps.
fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes one timespec, which all-zero is a valid value of.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// What became of an exec'd process before the daemon's loop sees it.
pub enum Outcome {
    /// Held at its entry point: apply, then release.
    Held(Box<Held>),
    /// Maps a target and runs (past its entry, or not caught): apply at once.
    Running(String),
    /// Maps no target by its files: looked at once its loader settled.
    Other,
}

pub struct Exec {
    pub pid: i32,
    /// The kernel's timestamp of the exec (`CLOCK_MONOTONIC`, ns).
    pub at_ns: u64,
    pub outcome: Outcome,
}

/// The events thread's side: the targets to catch processes for (set by the
/// daemon's loop), the per-file cache, where results go.
struct Catcher {
    targets: Arc<Mutex<HashSet<String>>>,
    needed: NeededCache,
    tx: Sender<Exec>,
    me: i32,
}

impl Catcher {
    /// Decides what to do with one exec'd process; a catch runs on a thread
    /// of its own (the tracer must stay one thread), so that one slow
    /// starter does not delay the next event. `false`: the daemon is gone.
    fn on_exec(&mut self, pid: i32, at_ns: u64) -> bool {
        if pid == self.me {
            return true;
        }
        let targets = self.targets.lock().map(|t| t.clone()).unwrap_or_default();
        let Some(target) = self.needed.target_of(pid, &targets) else {
            return self.tx.send(Exec { pid, at_ns, outcome: Outcome::Other }).is_ok();
        };
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new().name("exec-catch".into()).spawn(move || {
            let outcome = match startup::catch(pid, Instant::now() + CATCH_DEADLINE) {
                Ok(Caught::Held(held)) => Outcome::Held(held),
                Ok(Caught::Running(why)) => Outcome::Running(why),
                Err(e) => Outcome::Running(format!("not caught: {e}")),
            };
            tracing::debug!(pid, target = %target.path, "exec'd process will map a target");
            let _ = tx.send(Exec { pid, at_ns, outcome });
        });
        spawned.is_ok()
            || self.tx.send(Exec { pid, at_ns, outcome: Outcome::Running("no thread to catch it".into()) }).is_ok()
    }
}

/// The daemon's side: exec'd processes as they come.
pub struct ExecEvents {
    rx: Receiver<Exec>,
    targets: Arc<Mutex<HashSet<String>>>,
}

impl ExecEvents {
    /// Waits up to `timeout` for exec'd processes; returns those that came.
    fn wait(&self, timeout: Duration) -> Vec<Exec> {
        match self.rx.recv_timeout(timeout) {
            Ok(first) => std::iter::once(first).chain(self.rx.try_iter()).collect(),
            Err(_) => Vec::new(),
        }
    }
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

fn forward(fd: std::os::fd::OwnedFd, mut catcher: Catcher) {
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
        if let Some((pid, at)) = exec_event(&buf[..n as usize])
            && !catcher.on_exec(pid, at)
        {
            return;
        }
    }
}

/// Exec'd processes as they come; `None` where the connector cannot be used.
pub fn listen() -> Option<ExecEvents> {
    match subscribe() {
        Ok(fd) => {
            let (tx, rx) = std::sync::mpsc::channel();
            let targets = Arc::new(Mutex::new(HashSet::new()));
            let catcher =
                Catcher { targets: targets.clone(), needed: NeededCache::default(), tx, me: std::process::id() as i32 };
            std::thread::Builder::new().name("proc-events".into()).spawn(move || forward(fd, catcher)).ok()?;
            tracing::info!("listening to process events (proc connector); new processes are patched at exec");
            Some(ExecEvents { rx, targets })
        }
        Err(e) => {
            tracing::warn!(error = %e, "no process events (proc connector); relying on rescans");
            None
        }
    }
}

impl Daemon {
    /// Waits up to `timeout` for exec'd processes: a held one is patched and
    /// released at once, the others are queued for a look (`soon`).
    pub(super) fn exec_events(&mut self, timeout: Duration) {
        let Some(events) = &self.events else { return std::thread::sleep(timeout) };
        let targets: HashSet<String> = self.jobs.values().map(|j| j.build_id().to_owned()).collect();
        if let Ok(mut t) = events.targets.lock() {
            *t = targets;
        }
        for exec in events.wait(timeout) {
            let now = Instant::now();
            match exec.outcome {
                Outcome::Held(held) => self.patch_held(exec.pid, exec.at_ns, *held),
                Outcome::Running(why) => {
                    tracing::debug!(pid = exec.pid, why, "exec'd process runs; patching it now");
                    self.soon.push((now, exec.pid));
                }
                Outcome::Other => self.soon.push((now + super::LOADER_SETTLE, exec.pid)),
            }
        }
    }

    /// Applies every due job to a process held at its entry, then lets it go.
    fn patch_held(&mut self, pid: i32, at_ns: u64, held: Held) {
        let Some(start) = start_time(pid) else { return };
        let key = (pid, start);
        // An exec keeps pid and start time but runs a new program: forget
        // what was tried on the old one.
        self.seen.insert(key);
        for job in self.jobs.values_mut() {
            job.procs.remove(&key);
        }
        let stage = held.stage;
        self.visit(key);
        let patched = self.jobs.values().any(|j| j.procs.get(&key).is_some_and(|t| t.last.ok));
        let still_held = match held.release() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(pid, error = %e, "could not end the hold of a new process (its sleep ends by itself)");
                false
            }
        };
        let exec_to_patched_us = monotonic_ns().saturating_sub(at_ns) / 1000;
        tracing::info!(pid, caught = %stage, patched, held = still_held, exec_to_patched_us, "new process seen at its entry point");
        self.collect_results();
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
        d.extend_from_slice(&1u32.to_ne_bytes()); // cpu
        d.extend_from_slice(&5_000_000u64.to_ne_bytes()); // timestamp
        d.extend_from_slice(&77u32.to_ne_bytes()); // thread that exec'd
        d.extend_from_slice(&tgid.to_ne_bytes());
        d
    }

    #[test]
    fn exec_events_name_the_process_and_others_are_ignored() {
        assert_eq!(exec_event(&event(CN_IDX_PROC, PROC_EVENT_EXEC, 1234)), Some((1234, 5_000_000)));
        assert_eq!(exec_event(&event(CN_IDX_PROC, 1, 1234)), None, "fork");
        assert_eq!(exec_event(&event(9, PROC_EVENT_EXEC, 1234)), None, "another connector");
        assert_eq!(exec_event(&event(CN_IDX_PROC, PROC_EVENT_EXEC, 1)[..50]), None, "truncated");
        assert!(monotonic_ns() > 0);
        assert_eq!(listen_message().len(), NLMSG_HDR + CN_MSG + 4);
    }
}
