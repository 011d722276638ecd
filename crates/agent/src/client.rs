//! The HTTP client of the control plane API (blocking, rustls with ring when the
//! server URL is https).

use std::io::Read;
use std::time::Duration;

use crate::protocol::{Answer, CheckIn, EnrollAnswer, EnrollRequest};
use crate::state::StateError;

/// Largest artifact the agent downloads; matches the server's upload limit.
pub const MAX_ARTIFACT: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server URL {0:?} must start with http:// or https://")]
    BadUrl(String),
    #[error(
        "server URL {0:?} is plain http:// to another machine: anyone on the path could read and change the exchange; use https://, or --insecure-http (insecure_http = true) to allow it"
    )]
    InsecureHttp(String),
    #[error("CA certificate {path}: {message}")]
    CaCert { path: String, message: String },
    #[error("{what}: server answered {status}: {message}")]
    Status { what: &'static str, status: u16, message: String },
    #[error("{what}: cannot reach the server: {message}")]
    Transport { what: &'static str, message: String },
    #[error("{what}: unreadable answer: {message}")]
    Body { what: &'static str, message: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Signs each request as the enrolled machine, with a fresh sequence number
/// taken from the state directory.
pub struct MachineSigner<'a> {
    pub machine_id: &'a str,
    pub key: &'a hotpatch_wire::MachineKey,
    pub state_dir: &'a std::path::Path,
}

impl MachineSigner<'_> {
    fn sign(&self, request: ureq::Request, body: &[u8]) -> Result<ureq::Request, ClientError> {
        let sequence = crate::state::take_sequence(self.state_dir)?;
        let path = hotpatch_wire::signed_path(request.url()).to_string();
        let sig = self.key.sign(request.method(), &path, self.machine_id, sequence, body);
        Ok(sig.headers().iter().fold(request, |r, (name, value)| r.set(name, value)))
    }
}

fn private_ca(path: &std::path::Path) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let fail = |message: String| ClientError::CaCert { path: path.display().to_string(), message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no certificate in the PEM file".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether the authority of a URL (what follows `http://`) names this machine.
fn is_loopback(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub struct Client {
    base: String,
    http: ureq::Agent,
}

// One per check-in, moved once: boxing the answer would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum CheckInReply {
    Answer { etag: Option<String>, answer: Answer },
    NotModified,
}

impl Client {
    /// A client for `server`; with `ca_cert` (PEM) the server's certificate must
    /// chain to those certificates alone, instead of the public web roots.
    /// Plain `http://` is refused unless the server is this machine (loopback).
    pub fn new(server: &str, ca_cert: Option<&std::path::Path>) -> Result<Client, ClientError> {
        Client::with_options(server, ca_cert, false)
    }

    /// [`Client::new`]; `insecure_http` allows plain `http://` to another machine.
    pub fn with_options(
        server: &str,
        ca_cert: Option<&std::path::Path>,
        insecure_http: bool,
    ) -> Result<Client, ClientError> {
        let base = server.trim_end_matches('/');
        if let Some(rest) = base.strip_prefix("http://") {
            if !insecure_http && !is_loopback(rest) {
                return Err(ClientError::InsecureHttp(server.to_string()));
            }
        } else if !base.starts_with("https://") {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        let mut builder =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).timeout(Duration::from_secs(60));
        if let Some(path) = ca_cert {
            builder = builder.tls_config(std::sync::Arc::new(private_ca(path)?));
        }
        Ok(Client { base: base.to_string(), http: builder.build() })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn fail(what: &'static str, e: ureq::Error) -> ClientError {
        match e {
            ureq::Error::Status(status, response) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|m| m.as_str()).map(str::to_string))
                    .unwrap_or(text);
                ClientError::Status { what, status, message }
            }
            ureq::Error::Transport(t) => ClientError::Transport { what, message: t.to_string() },
        }
    }

    pub fn enroll(&self, token: &str, hostname: &str, public_key: &str) -> Result<EnrollAnswer, ClientError> {
        const WHAT: &str = "enrollment";
        let response = self
            .http
            .post(&format!("{}/api/v1/agent/enroll", self.base))
            .send_json(EnrollRequest { token, hostname, public_key })
            .map_err(|e| Self::fail(WHAT, e))?;
        response.into_json().map_err(|e| ClientError::Body { what: WHAT, message: e.to_string() })
    }

    pub fn check_in(
        &self,
        signer: &MachineSigner<'_>,
        body: &CheckIn<'_>,
        etag: Option<&str>,
    ) -> Result<CheckInReply, ClientError> {
        const WHAT: &str = "check-in";
        // The signature covers these exact bytes, so they are made once here.
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Body { what: WHAT, message: e.to_string() })?;
        let mut request =
            self.http.post(&format!("{}/api/v1/agent/checkin", self.base)).set("Content-Type", "application/json");
        if let Some(tag) = etag {
            request = request.set("If-None-Match", tag);
        }
        let response = signer.sign(request, &bytes)?.send_bytes(&bytes).map_err(|e| Self::fail(WHAT, e))?;
        if response.status() == 304 {
            return Ok(CheckInReply::NotModified);
        }
        let etag = response.header("ETag").map(str::to_string);
        let answer = response.into_json().map_err(|e| ClientError::Body { what: WHAT, message: e.to_string() })?;
        Ok(CheckInReply::Answer { etag, answer })
    }

    /// Downloads an artifact; `url` is the server-relative path from the answer.
    pub fn download(&self, signer: &MachineSigner<'_>, url: &str) -> Result<Vec<u8>, ClientError> {
        const WHAT: &str = "artifact download";
        if !url.starts_with("/api/v1/artifacts/") {
            return Err(ClientError::Body { what: WHAT, message: format!("unexpected artifact URL {url:?}") });
        }
        let response =
            signer.sign(self.http.get(&format!("{}{url}", self.base)), &[])?.call().map_err(|e| Self::fail(WHAT, e))?;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(MAX_ARTIFACT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::Transport { what: WHAT, message: e.to_string() })?;
        if bytes.len() as u64 > MAX_ARTIFACT {
            return Err(ClientError::Body {
                what: WHAT,
                message: format!("artifact larger than {MAX_ARTIFACT} bytes"),
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_off_loopback_unless_allowed() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost/",
            "http://[::1]:9/x",
            "http://127.8.0.1",
            "https://example.com",
        ] {
            assert!(Client::new(ok, None).is_ok(), "{ok}");
        }
        for refused in
            ["http://example.com", "http://10.0.0.1:80", "http://127.0.0.1.example.com", "http://u@192.168.1.1"]
        {
            let e = Client::new(refused, None).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("--insecure-http") && e.contains(refused), "{refused}: {e}");
            assert!(Client::with_options(refused, None, true).is_ok(), "{refused}");
        }
        assert!(matches!(Client::new("ftp://x", None), Err(ClientError::BadUrl(_))));
    }
}
