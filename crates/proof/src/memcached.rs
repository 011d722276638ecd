//! memcached under test, over its text protocol. Normal requests alternate a
//! `set` of the client's own key and a `get` of it (the value last set must
//! come back); the crafted request is a `get` of a 220-byte key the client set
//! at connect: the baseline returns its value, the fix
//! (crates/proof/fixtures/memcached-get-key-bounds.patch) refuses keys over
//! 200 bytes with memcached's own error for over-long keys.

use crate::kind::Crafted;
use crate::resp::bad;
use std::ffi::OsString;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const CRAFTED_KEY_LEN: usize = 220;
const REFUSED: &str = "CLIENT_ERROR bad command line format";

pub fn args(port: u16, threads: u32) -> Vec<OsString> {
    let port = port.to_string();
    let threads = threads.to_string();
    // -U 0: no UDP; -u root: memcached refuses to run as root without it
    // (ignored when not root); -c: room for every client and control request.
    ["-l", "127.0.0.1", "-p", &port, "-U", "0", "-t", &threads, "-m", "64", "-c", "1024", "-u", "root"]
        .iter()
        .map(OsString::from)
        .collect()
}

pub fn ready(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut c) = Conn::connect(addr, timeout) else { return false };
    c.send(b"version\r\n").is_ok() && c.line().is_ok_and(|l| l.starts_with("VERSION "))
}

/// A text-protocol connection: one request in flight.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// One answer to a `get` of one key.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Value {
        key: String,
        flags: u32,
        data: Vec<u8>,
    },
    Miss,
    /// Any other line (an error).
    Line(String),
}

impl Conn {
    fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(Conn { reader: BufReader::with_capacity(64 << 10, stream), writer })
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    fn line(&mut self) -> std::io::Result<String> {
        crate::resp::crlf_line(&mut self.reader)
    }

    /// `set key flags 0 len` with `data`: the reply line.
    fn set(&mut self, key: &str, flags: u32, data: &[u8]) -> std::io::Result<String> {
        let mut req = format!("set {key} {flags} 0 {}\r\n", data.len()).into_bytes();
        req.extend_from_slice(data);
        req.extend_from_slice(b"\r\n");
        self.send(&req)?;
        self.line()
    }

    fn get(&mut self, key: &str) -> std::io::Result<Got> {
        self.send(format!("get {key}\r\n").as_bytes())?;
        let line = self.line()?;
        if line == "END" {
            return Ok(Got::Miss);
        }
        let Some(header) = line.strip_prefix("VALUE ") else { return Ok(Got::Line(line)) };
        let (key, flags, len) = value_header(header)?;
        let mut data = vec![0; len + 2];
        self.reader.read_exact(&mut data)?;
        if !data.ends_with(b"\r\n") {
            return Err(bad("value not ended by CRLF"));
        }
        data.truncate(len);
        let end = self.line()?;
        if end != "END" {
            return Err(bad(&format!("a value followed by {end:?}, not END")));
        }
        Ok(Got::Value { key, flags, data })
    }
}

/// `KEY FLAGS BYTES` of a `VALUE` line.
fn value_header(header: &str) -> std::io::Result<(String, u32, usize)> {
    let mut parts = header.split(' ');
    let (Some(key), Some(flags), Some(len), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad(&format!("VALUE line {header:?} is not KEY FLAGS BYTES")));
    };
    let flags = flags.parse().map_err(|_| bad(&format!("VALUE flags {flags:?} not a number")))?;
    let len = len.parse().map_err(|_| bad(&format!("VALUE length {len:?} not a number")))?;
    Ok((key.to_owned(), flags, len))
}

pub struct Session {
    conn: Conn,
    id: usize,
    key: String,
    /// The value last stored under `key`.
    last: Vec<u8>,
    crafted_key: String,
    crafted_value: Vec<u8>,
}

impl Session {
    /// Connects and stores the client's own key and its crafted key.
    pub fn connect(addr: SocketAddr, id: usize, timeout: Duration) -> std::io::Result<Session> {
        let mut conn = Conn::connect(addr, timeout)?;
        let key = format!("client-{id}");
        let last = format!("client {id} connected").into_bytes();
        let mut crafted_key = format!("crafted-{id}-");
        crafted_key.extend(std::iter::repeat_n('x', CRAFTED_KEY_LEN - crafted_key.len()));
        let crafted_value = format!("crafted value of client {id}").into_bytes();
        for (k, v) in [(&key, &last), (&crafted_key, &crafted_value)] {
            let reply = conn.set(k, id as u32, v)?;
            if reply != "STORED" {
                return Err(bad(&format!("set {} bytes of key at connect: {reply:?}", k.len())));
            }
        }
        Ok(Session { conn, id, key, last, crafted_key, crafted_value })
    }

    fn expect_value(&self, got: &Got, key: &str, data: &[u8]) -> bool {
        *got == Got::Value { key: key.to_owned(), flags: self.id as u32, data: data.to_vec() }
    }
}

impl crate::kind::Session for Session {
    fn normal(&mut self, seq: u64) -> std::io::Result<Result<(), String>> {
        if seq.is_multiple_of(2) {
            let got = self.conn.get(&self.key)?;
            return Ok(if self.expect_value(&got, &self.key, &self.last) {
                Ok(())
            } else {
                Err(format!("get {} answered {}", self.key, show(&got)))
            });
        }
        let value = format!("client {} request {seq}", self.id).into_bytes();
        let reply = self.conn.set(&self.key, self.id as u32, &value)?;
        if reply != "STORED" {
            return Ok(Err(format!("set {} answered {reply:?}", self.key)));
        }
        self.last = value;
        Ok(Ok(()))
    }

    fn crafted(&mut self, _seq: u64) -> std::io::Result<Crafted> {
        let got = self.conn.get(&self.crafted_key)?;
        Ok(if self.expect_value(&got, &self.crafted_key, &self.crafted_value) {
            Crafted::Unpatched
        } else if got == Got::Line(REFUSED.into()) {
            Crafted::Patched
        } else {
            Crafted::Other(format!("crafted get answered {}", show(&got)))
        })
    }
}

fn show(got: &Got) -> String {
    match got {
        Got::Value { key, flags, data } => format!(
            "VALUE of a {}-byte key {:?}, flags {flags}, data {:?}",
            key.len(),
            key.get(..24).unwrap_or(key),
            String::from_utf8_lossy(data)
        ),
        Got::Miss => "END (a miss)".into(),
        Got::Line(l) => format!("{l:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::value_header;

    #[test]
    fn a_value_line_gives_key_flags_and_length() {
        assert_eq!(value_header("client-3 3 17").unwrap(), ("client-3".to_owned(), 3, 17));
    }

    #[test]
    fn a_malformed_value_line_is_an_error_naming_it() {
        for bad in ["k 1", "k 1 2 3", "k x 2", "k 1 -2", ""] {
            let e = value_header(bad).unwrap_err().to_string();
            assert!(e.contains("VALUE"), "{bad:?}: {e}");
        }
    }
}
