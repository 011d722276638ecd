//! Just enough HTTP/1.1 for the checking client: one keep-alive connection,
//! one request in flight, responses framed by `Content-Length` (what a static
//! file server sends). Anything else is an error naming what was wrong.

use crate::resp::{bad, crlf_line};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response's header lines are bounded, so a broken server cannot make the
/// client read forever.
const MAX_HEADERS: usize = 100;
/// Larger bodies than this are not expected from the files the harness serves.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The server will close the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Conn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let (reader, writer) = crate::resp::open(addr, timeout)?;
        Ok(Conn { reader, writer, host: addr.to_string() })
    }

    /// `GET path` on this connection, and its whole response.
    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hotpatch-proof\r\n\r\n", self.host);
        self.writer.write_all(request.as_bytes())?;
        let status = status_code(&crlf_line(&mut self.reader)?)?;
        let headers = self.headers()?;
        let body = self.body(&headers)?;
        Ok(Response { status, headers, body })
    }

    fn headers(&mut self) -> std::io::Result<Vec<(String, String)>> {
        let mut headers = Vec::new();
        loop {
            let line = crlf_line(&mut self.reader)?;
            if line.is_empty() {
                return Ok(headers);
            }
            if headers.len() == MAX_HEADERS {
                return Err(bad(&format!("more than {MAX_HEADERS} header lines")));
            }
            headers.push(header_line(&line)?);
        }
    }

    fn body(&mut self, headers: &[(String, String)]) -> std::io::Result<Vec<u8>> {
        if headers.iter().any(|(n, _)| n == "transfer-encoding") {
            return Err(bad("a Transfer-Encoding body (only Content-Length is read)"));
        }
        let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") else {
            return Err(bad("a response without Content-Length"));
        };
        let len: usize = len.parse().map_err(|_| bad(&format!("Content-Length {len:?} is not a number")))?;
        if len > MAX_BODY {
            return Err(bad(&format!("Content-Length {len} over {MAX_BODY}")));
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(body)
    }
}

/// The code of a status line `HTTP/1.1 200 OK`.
fn status_code(line: &str) -> std::io::Result<u16> {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some("HTTP/1.1" | "HTTP/1.0"), Some(Ok(code))) if (100..600).contains(&code) => Ok(code),
        _ => Err(bad(&format!("status line {line:?} is not HTTP/1.x CODE REASON"))),
    }
}

/// `Name: value` as (lower-cased name, trimmed value).
fn header_line(line: &str) -> std::io::Result<(String, String)> {
    match line.split_once(':') {
        Some((name, value)) if !name.is_empty() && !name.contains([' ', '\t']) => {
            Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
        }
        _ => Err(bad(&format!("header line {line:?} is not NAME: VALUE"))),
    }
}

#[cfg(test)]
mod tests {
    use super::{header_line, status_code};

    #[test]
    fn a_status_line_gives_its_code() {
        assert_eq!(status_code("HTTP/1.1 200 OK").unwrap(), 200);
        assert_eq!(status_code("HTTP/1.1 404 Not Found").unwrap(), 404);
    }

    #[test]
    fn a_malformed_status_line_is_an_error_naming_it() {
        for line in ["", "HTTP/1.1", "HTTP/2 200 OK", "HTTP/1.1 abc OK", "HTTP/1.1 999 Huh", "ICY 200 OK"] {
            let e = status_code(line).unwrap_err().to_string();
            assert!(e.contains("status line"), "{line:?}: {e}");
        }
    }

    #[test]
    fn header_names_are_lower_cased_and_values_trimmed() {
        assert_eq!(header_line("Content-Length:  17 ").unwrap(), ("content-length".into(), "17".into()));
        assert_eq!(header_line("X-A:").unwrap(), ("x-a".into(), String::new()));
    }

    #[test]
    fn a_line_without_a_name_is_an_error() {
        for line in ["no colon", ": value", "Bad Name: x"] {
            assert!(header_line(line).unwrap_err().to_string().contains("header line"), "{line:?}");
        }
    }
}
