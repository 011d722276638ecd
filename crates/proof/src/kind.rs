//! The server under test, as a choice: how to start it, how to tell it is
//! ready, and a session that sends the normal and the crafted request and
//! checks each answer. The patch/rollback loop (main.rs) knows nothing else.

use crate::{memcached, redis};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// redis-server: ECHO of an argument over 1024 bytes is refused when patched.
    Redis,
    /// memcached: a get of a key over 200 bytes is refused when patched.
    Memcached,
}

/// What a crafted request was answered with.
#[derive(Debug, PartialEq, Eq)]
pub enum Crafted {
    Unpatched,
    Patched,
    /// Neither version's answer (described).
    Other(String),
}

/// One connection that knows the server's protocol and the answers expected.
pub trait Session: Send {
    /// A request both versions answer alike: `Err(what)` when the answer is wrong.
    fn normal(&mut self, seq: u64) -> std::io::Result<Result<(), String>>;
    /// The request the fix changes the answer to.
    fn crafted(&mut self, seq: u64) -> std::io::Result<Crafted>;
}

impl ServerKind {
    /// Command-line arguments: loopback `port`, `threads` worker (memcached)
    /// or I/O (redis) threads, state kept in `dir`.
    pub fn args(self, port: u16, threads: u32, dir: &Path) -> Vec<OsString> {
        match self {
            ServerKind::Redis => redis::args(port, threads, dir),
            ServerKind::Memcached => memcached::args(port, threads),
        }
    }

    /// A session of client `id`, which may set up what its requests need.
    pub fn connect(self, addr: SocketAddr, id: usize, timeout: Duration) -> std::io::Result<Box<dyn Session>> {
        Ok(match self {
            ServerKind::Redis => Box::new(redis::Session::connect(addr, id, timeout)?),
            ServerKind::Memcached => Box::new(memcached::Session::connect(addr, id, timeout)?),
        })
    }

    /// Whether the server answers a trivial request on `addr`.
    pub fn ready(self, addr: SocketAddr) -> bool {
        let timeout = Duration::from_secs(1);
        match self {
            ServerKind::Redis => redis::ready(addr, timeout),
            ServerKind::Memcached => memcached::ready(addr, timeout),
        }
    }
}
