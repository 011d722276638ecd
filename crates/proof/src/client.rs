//! The checking clients: each keeps one connection busy with normal and
//! crafted requests and checks every answer against the version the server
//! is known to run.
//!
//! A client reads the expected version before it sends and again after the
//! reply; when both readings are the same (no transition started or ended in
//! between) a crafted answer of the other version is a *wrong answer*, and so
//! is a normal one for a server whose every answer shows its version (nginx). Any
//! other unexpected reply, a broken connection or a timeout is a *failure*.

use crate::kind::{Crafted, ServerKind, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a client must see: packed as `seq << 2 | version`.
pub const UNPATCHED: u64 = 0;
pub const PATCHED: u64 = 1;
pub const SWITCHING: u64 = 2;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The control connection's client id (above any --clients).
const CONTROL_ID: usize = 1_000_000;

pub struct Shared {
    pub state: AtomicU64,
    pub stop: AtomicBool,
    /// Whether clients send crafted requests (not while steady state is
    /// measured: the patched answer to one, an error reply, costs the server
    /// other work than the normal answer, and throughput would compare the
    /// fix's semantics instead of the cost of running through a hotpatch).
    pub crafted: AtomicBool,
    pub origin: Instant,
}

impl Shared {
    pub fn set(&self, version: u64) {
        let seq = (self.state.load(Ordering::SeqCst) >> 2) + 1;
        self.state.store(seq << 2 | version, Ordering::SeqCst);
    }
}

/// One request as the client saw it.
#[derive(Clone, Copy)]
pub struct Sample {
    /// Sent, µs since the generation's origin.
    pub sent_us: u64,
    pub latency_ns: u64,
    pub crafted: bool,
}

#[derive(Default)]
pub struct ClientResult {
    pub samples: Vec<Sample>,
    pub requests: u64,
    pub crafted: u64,
    pub failures: u64,
    pub wrong: u64,
    pub checked_after_switch: u64,
    pub first_failures: Vec<String>,
}

impl ClientResult {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        self.note(what);
    }

    fn note(&mut self, what: String) {
        if self.first_failures.len() < 5 {
            self.first_failures.push(what);
        }
    }
}

pub fn client(kind: ServerKind, addr: SocketAddr, id: usize, shared: Arc<Shared>) -> ClientResult {
    let mut r = ClientResult::default();
    let mut session = match kind.connect(addr, id, TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            r.fail(format!("client {id}: connect: {e}"));
            return r;
        }
    };
    let mut i: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        i += 1;
        let is_crafted = i.is_multiple_of(4) && shared.crafted.load(Ordering::Relaxed);
        let before = shared.state.load(Ordering::SeqCst);
        let t0 = Instant::now();
        let answer = if is_crafted {
            session.crafted(i).map(Some)
        } else {
            session.normal(i).map(|n| n.err().map(Crafted::Other))
        };
        let latency = t0.elapsed();
        let after = shared.state.load(Ordering::SeqCst);
        r.requests += 1;
        r.samples.push(Sample {
            sent_us: t0.duration_since(shared.origin).as_micros() as u64,
            latency_ns: latency.as_nanos() as u64,
            crafted: is_crafted,
        });
        match answer {
            Err(e) => {
                r.fail(format!("client {id} request {i}: {e}"));
                match kind.connect(addr, id, TIMEOUT) {
                    Ok(s) => session = s,
                    Err(e) => {
                        r.fail(format!("client {id}: reconnect: {e}"));
                        return r;
                    }
                }
            }
            Ok(None) => {
                if let Some(patched) = session.shown_version() {
                    check_version(&mut r, id, i, before, after, patched);
                }
            }
            Ok(Some(Crafted::Other(what))) => r.fail(format!("client {id} request {i}: {what}")),
            Ok(Some(seen)) => {
                r.crafted += 1;
                check_version(&mut r, id, i, before, after, seen == Crafted::Patched);
            }
        }
    }
    r
}

/// A crafted answer against the version known before and after it.
fn check_version(r: &mut ClientResult, id: usize, i: u64, before: u64, after: u64, refused: bool) {
    let version = before & 3;
    if before != after || version == SWITCHING {
        return; // sent or answered while a transition ran: either answer is right
    }
    r.checked_after_switch += 1;
    if (version == PATCHED) != refused {
        r.wrong += 1;
        r.note(format!(
            "client {id} request {i}: wrong version: {} answered after the {} returned",
            if refused { "patched" } else { "unpatched" },
            if version == PATCHED { "apply" } else { "rollback (or start)" }
        ));
    }
}

/// One control request on its own connection: the crafted request must be
/// answered as `version` (this is checked after every transition).
pub fn control(kind: ServerKind, addr: SocketAddr, version: u64) -> Result<(), String> {
    let mut s: Box<dyn Session> =
        kind.connect(addr, CONTROL_ID, TIMEOUT).map_err(|e| format!("control connect: {e}"))?;
    let seen = s.crafted(0).map_err(|e| format!("control request: {e}"))?;
    let want = if version == PATCHED { Crafted::Patched } else { Crafted::Unpatched };
    if seen == want {
        Ok(())
    } else {
        Err(format!("control request after the {}: {seen:?}", if version == PATCHED { "apply" } else { "rollback" }))
    }
}
