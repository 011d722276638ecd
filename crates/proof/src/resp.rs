//! Just enough of the redis protocol (RESP2) for the checking client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One reply, as far as the client needs to tell answers apart.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Bulk(Option<Vec<u8>>),
    Integer(i64),
    /// An array (not expected by the commands the client sends).
    Array(i64),
}

pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    buf: Vec<u8>,
}

/// A loopback connection for a checking client: no Nagle delay, every read
/// and write bounded by `timeout`, a buffered reader and a writer of its own.
pub fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<(BufReader<TcpStream>, TcpStream)> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let writer = stream.try_clone()?;
    Ok((BufReader::with_capacity(64 << 10, stream), writer))
}

impl Conn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let (reader, writer) = open(addr, timeout)?;
        Ok(Conn { reader, writer, buf: Vec::new() })
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.buf.clear();
        write!(self.buf, "*{}\r\n", args.len())?;
        for a in args {
            write!(self.buf, "${}\r\n", a.len())?;
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&self.buf)?;
        self.read_reply()
    }

    fn line(&mut self) -> std::io::Result<String> {
        crlf_line(&mut self.reader)
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply line"))?;
        let number = || rest.parse::<i64>().map_err(|_| bad("bad number in reply"));
        Ok(match kind {
            "+" => Reply::Status(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Integer(number()?),
            "*" => Reply::Array(number()?),
            "$" => {
                let n = number()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    if !data.ends_with(b"\r\n") {
                        return Err(bad("bulk reply not ended by CRLF"));
                    }
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            }
            _ => return Err(bad("unknown reply type")),
        })
    }
}

/// One reply line of a CRLF text protocol (RESP, memcached's), without its CRLF.
pub(crate) fn crlf_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(bad("reply line not ended by CRLF (connection closed?)"));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| bad("reply line is not UTF-8"))
}

pub(crate) fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}
