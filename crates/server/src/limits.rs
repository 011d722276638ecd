//! What one connection may hold and for how long, so that slow or idle clients
//! cannot take the server away from everyone else: each connection must send a
//! request's head within `header_timeout` (also while it idles between requests
//! on keep-alive), no body may pause longer than `body_timeout` between reads, and
//! at most `max_connections` are open at once, a number that stays below the
//! process's open-file limit, so `accept` never fails for lack of descriptors.
//! Beyond the cap new connections wait in the kernel's listen queue until a
//! slot frees (idle ones free theirs within `header_timeout`). One address may
//! hold at most `max_per_address` of them; a connection beyond that is answered
//! 503 at once and closed, so one client cannot fill the server for all others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_per_address: usize,
}

/// Descriptors kept out of the connection cap: the database pool (and SQLite's
/// WAL files), trust keys, logs, the listener, TLS handshakes in progress.
const RESERVED_FDS: u64 = 64;

impl Limits {
    /// Defaults for this process: the cap from its open-file limit, leaving room
    /// for `db_connections` database connections (each may hold files too).
    pub fn for_process(db_connections: u32) -> Limits {
        let nofile = open_file_limit().unwrap_or(1024);
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: connection_cap(nofile, db_connections),
            max_per_address: connection_cap(nofile, db_connections) / 2,
        }
    }
}

/// Open connections per client address; a [`AddressSlot`] is one of them.
#[derive(Debug, Default, Clone)]
pub struct PerAddress {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    /// A slot for one more connection from `ip`, or None when it already has `max`.
    pub fn take(&self, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { open: Arc::clone(&self.open), ip })
    }
}

/// One open connection of an address; dropping it frees the place.
#[derive(Debug)]
pub struct AddressSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The connection cap for an open-file limit of `nofile`.
pub fn connection_cap(nofile: u64, db_connections: u32) -> usize {
    let reserved = RESERVED_FDS + 4 * u64::from(db_connections);
    // A process with almost no descriptors still serves a few at a time.
    usize::try_from(nofile.saturating_sub(reserved).clamp(16, 65_536)).unwrap_or(16)
}

/// The soft limit on open files (`ulimit -n`) of this process, from /proc.
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next()?;
    if soft == "unlimited" { Some(u64::MAX) } else { soft.parse().ok() }
}

/// A request body that fails when the client sends nothing for `timeout`
/// (nginx's `client_body_timeout`): a body sent slowly but steadily is fine.
pub struct TimeoutBody<B> {
    inner: Pin<Box<B>>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<B> TimeoutBody<B> {
    pub fn new(inner: B, timeout: Duration) -> TimeoutBody<B> {
        TimeoutBody { inner: Box::pin(inner), timeout, sleep: Box::pin(tokio::time::sleep(timeout)) }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body: nothing received for {0:?}")]
pub struct BodyTimedOut(Duration);

impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = self.inner.as_mut().poll_frame(cx) {
            let deadline = Instant::now() + self.timeout;
            self.sleep.as_mut().reset(deadline);
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_open_file_limit() {
        assert_eq!(connection_cap(1024, 16), 1024 - 64 - 64);
        assert!(connection_cap(256, 8) < 256);
        assert_eq!(connection_cap(50, 16), 16);
        assert_eq!(connection_cap(u64::MAX, 16), 65_536);
        assert!(open_file_limit().is_some_and(|n| n > 0), "this process has an open-file limit in /proc");
    }

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_places_back() {
        let per = PerAddress::default();
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
        let first = per.take(a, 2).expect("first");
        let _second = per.take(a, 2).expect("second");
        assert!(per.take(a, 2).is_none(), "a third from the same address");
        assert!(per.take(b, 2).is_some(), "another address is not held back");
        drop(first);
        assert!(per.take(a, 2).is_some(), "a closed connection frees its place");
    }
}
