//! The server under test, as a choice: how to start it, how to tell it is
//! ready, and a session that sends the normal and the crafted request and
//! checks each answer. The patch/rollback loop (main.rs) knows nothing else.

use crate::{memcached, nginx, redis};
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
    /// nginx: every response carries `X-Content-Type-Options: nosniff` when
    /// patched; a master and worker processes, every one of them patched.
    Nginx,
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
    /// For a server whose every answer shows its version: what the last
    /// normal answer showed (true: the fix's), to be checked like a crafted one.
    fn shown_version(&self) -> Option<bool> {
        None
    }
}

impl ServerKind {
    /// Command-line arguments: loopback `port`, `threads` worker threads
    /// (memcached), I/O threads (redis) or worker processes (nginx), state
    /// (and nginx's configuration, written here) kept in `dir`.
    pub fn args(self, port: u16, threads: u32, dir: &Path) -> std::io::Result<Vec<OsString>> {
        Ok(match self {
            ServerKind::Redis => redis::args(port, threads, dir),
            ServerKind::Memcached => memcached::args(port, threads),
            ServerKind::Nginx => nginx::args(port, threads, dir)?,
        })
    }

    /// Processes the server runs once ready: nginx's master and its workers.
    pub fn processes(self, threads: u32) -> usize {
        match self {
            ServerKind::Nginx => threads as usize + 1,
            ServerKind::Redis | ServerKind::Memcached => 1,
        }
    }

    /// A session of client `id`, which may set up what its requests need.
    pub fn connect(self, addr: SocketAddr, id: usize, timeout: Duration) -> std::io::Result<Box<dyn Session>> {
        Ok(match self {
            ServerKind::Redis => Box::new(redis::Session::connect(addr, id, timeout)?),
            ServerKind::Memcached => Box::new(memcached::Session::connect(addr, id, timeout)?),
            ServerKind::Nginx => Box::new(nginx::Session::connect(addr, id, timeout)?),
        })
    }

    /// Whether the server answers a trivial request on `addr`.
    pub fn ready(self, addr: SocketAddr) -> bool {
        let timeout = Duration::from_secs(1);
        match self {
            ServerKind::Redis => redis::ready(addr, timeout),
            ServerKind::Memcached => memcached::ready(addr, timeout),
            ServerKind::Nginx => nginx::ready(addr, timeout),
        }
    }
}
