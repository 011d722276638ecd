//! nginx under test: a master and `--threads` worker processes serving two
//! static files over HTTP/1.1 keep-alive. The fix
//! (crates/proof/fixtures/nginx-nosniff-header.patch) makes the header filter
//! write `X-Content-Type-Options: nosniff` into every response, so every
//! answer shows the version that wrote it: normal requests check the body and
//! report the version too; the crafted request is a second file.

use crate::http::{Conn, Response};
use crate::kind::Crafted;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const NORMAL_PATH: &str = "/index.html";
const NORMAL_BODY: &str = "hotpatch proof: the normal page\n";
const CRAFTED_PATH: &str = "/crafted.txt";
const CRAFTED_BODY: &str = "hotpatch proof: the crafted page\n";
const FIX_HEADER: &str = "x-content-type-options";
const FIX_VALUE: &str = "nosniff";

/// Writes the configuration and the files served into `dir`, and gives the
/// arguments that run nginx on them in the foreground.
pub fn args(port: u16, workers: u32, dir: &Path) -> std::io::Result<Vec<OsString>> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join(&NORMAL_PATH[1..]), NORMAL_BODY)?;
    std::fs::write(www.join(&CRAFTED_PATH[1..]), CRAFTED_BODY)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(port, workers, dir))?;
    let mut a = vec![OsString::from("-p"), dir.as_os_str().to_owned(), OsString::from("-c"), conf.into_os_string()];
    a.push("-e".into());
    a.push(dir.join("error.log").into_os_string());
    Ok(a)
}

/// Every path the package's build compiled in (/var/lib/nginx, /run, /var/log)
/// is moved into `dir`, so nothing outside it is needed or touched.
fn config(port: u16, workers: u32, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    # one connection per client for the whole run
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
    }}
}}
"
    )
}

pub fn ready(addr: SocketAddr, timeout: Duration) -> bool {
    Conn::connect(addr, timeout).and_then(|mut c| c.get(NORMAL_PATH)).is_ok_and(|r| r.status == 200)
}

/// Which version wrote `r`, if it is the file at all.
fn version(r: &Response, body: &str) -> Crafted {
    if r.status != 200 || r.body != body.as_bytes() {
        return Crafted::Other(format!(
            "status {} with {} bytes {:?}",
            r.status,
            r.body.len(),
            String::from_utf8_lossy(&r.body[..r.body.len().min(40)])
        ));
    }
    match r.header(FIX_HEADER) {
        None => Crafted::Unpatched,
        Some(FIX_VALUE) => Crafted::Patched,
        Some(other) => Crafted::Other(format!("{FIX_HEADER}: {other:?}")),
    }
}

pub struct Session {
    conn: Conn,
    addr: SocketAddr,
    timeout: Duration,
    /// The server said it closes the connection after the last response.
    closing: bool,
    /// What the last normal response showed: true when the fix wrote it.
    shown: Option<bool>,
}

impl Session {
    pub fn connect(addr: SocketAddr, _id: usize, timeout: Duration) -> std::io::Result<Session> {
        Ok(Session { conn: Conn::connect(addr, timeout)?, addr, timeout, closing: false, shown: None })
    }

    /// `GET path`, on a new connection when the server closed the last one
    /// (a keep-alive limit is the server's right, not a failure).
    fn get(&mut self, path: &str) -> std::io::Result<Response> {
        if self.closing {
            self.conn = Conn::connect(self.addr, self.timeout)?;
        }
        let r = self.conn.get(path)?;
        self.closing = r.closes();
        Ok(r)
    }
}

impl crate::kind::Session for Session {
    fn normal(&mut self, _seq: u64) -> std::io::Result<Result<(), String>> {
        let r = self.get(NORMAL_PATH)?;
        self.shown = None;
        Ok(match version(&r, NORMAL_BODY) {
            Crafted::Other(what) => Err(format!("GET {NORMAL_PATH}: {what}")),
            v => {
                self.shown = Some(v == Crafted::Patched);
                Ok(())
            }
        })
    }

    fn crafted(&mut self, _seq: u64) -> std::io::Result<Crafted> {
        let r = self.get(CRAFTED_PATH)?;
        Ok(match version(&r, CRAFTED_BODY) {
            Crafted::Other(what) => Crafted::Other(format!("GET {CRAFTED_PATH}: {what}")),
            v => v,
        })
    }

    fn shown_version(&self) -> Option<bool> {
        self.shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_fix_header_tells_the_version() {
        assert_eq!(version(&response(200, &[("server", "nginx")], NORMAL_BODY), NORMAL_BODY), Crafted::Unpatched);
        let patched = response(200, &[(FIX_HEADER, FIX_VALUE)], NORMAL_BODY);
        assert_eq!(version(&patched, NORMAL_BODY), Crafted::Patched);
    }

    #[test]
    fn another_status_body_or_header_value_is_neither_version() {
        for r in [
            response(404, &[], NORMAL_BODY),
            response(200, &[], "another page\n"),
            response(200, &[(FIX_HEADER, "sniff")], NORMAL_BODY),
        ] {
            assert!(matches!(version(&r, NORMAL_BODY), Crafted::Other(_)), "{r:?}");
        }
    }

    #[test]
    fn the_configuration_keeps_every_path_in_its_directory() {
        let c = config(8080, 8, Path::new("/tmp/x"));
        assert!(c.contains("worker_processes 8;") && c.contains("listen 127.0.0.1:8080;"), "{c}");
        for line in c.lines().filter(|l| l.contains(" /")) {
            assert!(line.contains("/tmp/x/") || line.trim_start().starts_with('#'), "{line}");
        }
    }
}
