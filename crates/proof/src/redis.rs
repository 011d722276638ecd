//! redis under test: `ECHO` of a normal argument is echoed by both versions;
//! of one over 1024 bytes (crafted) it is echoed by the baseline and refused
//! by the fix (crates/proof/fixtures/redis-echo-bounds.patch).

use crate::kind::Crafted;
use crate::resp::{Conn, Reply};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const CRAFTED_LEN: usize = 1100;
const TOO_LONG: &str = "ERR ECHO argument too long";

pub fn args(port: u16, io_threads: u32, dir: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--io-threads",
        &io_threads.to_string(),
        "--io-threads-do-reads",
        if io_threads > 1 { "yes" } else { "no" },
        "--daemonize",
        "no",
        "--logfile",
        "",
        "--dir",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    a.push(dir.as_os_str().to_owned());
    a
}

pub fn ready(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut c) = Conn::connect(addr, timeout) else { return false };
    matches!(c.call(&[b"PING"]), Ok(Reply::Status(s)) if s == "PONG")
}

pub struct Session {
    conn: Conn,
    id: usize,
    crafted: Vec<u8>,
}

impl Session {
    pub fn connect(addr: SocketAddr, id: usize, timeout: Duration) -> std::io::Result<Session> {
        Ok(Session { conn: Conn::connect(addr, timeout)?, id, crafted: vec![b'x'; CRAFTED_LEN] })
    }
}

impl crate::kind::Session for Session {
    fn normal(&mut self, seq: u64) -> std::io::Result<Result<(), String>> {
        let arg = format!("client {} request {seq}", self.id);
        let reply = self.conn.call(&[b"ECHO", arg.as_bytes()])?;
        Ok(if reply == Reply::Bulk(Some(arg.into_bytes())) {
            Ok(())
        } else {
            Err(format!("ECHO answered {}", show(&reply)))
        })
    }

    fn crafted(&mut self, seq: u64) -> std::io::Result<Crafted> {
        // A tag per request: an answer meant for another request cannot pass.
        let tag = format!("{}-{seq}-", self.id);
        self.crafted[..tag.len()].copy_from_slice(tag.as_bytes());
        let reply = self.conn.call(&[b"ECHO", &self.crafted])?;
        Ok(if reply == Reply::Bulk(Some(self.crafted.clone())) {
            Crafted::Unpatched
        } else if reply == Reply::Error(TOO_LONG.into()) {
            Crafted::Patched
        } else {
            Crafted::Other(format!("crafted ECHO answered {}", show(&reply)))
        })
    }
}

fn show(reply: &Reply) -> String {
    match reply {
        Reply::Bulk(Some(b)) if b.len() > 40 => format!("a bulk string of {} bytes", b.len()),
        Reply::Bulk(Some(b)) => format!("{:?}", String::from_utf8_lossy(b)),
        other => format!("{other:?}"),
    }
}
