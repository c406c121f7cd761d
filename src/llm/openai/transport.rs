//! The HTTP transport of `--backend openai`, on a maintained client (ureq with rustls).
//!
//! One connection pool (keep-alive) serves every request thread. HTTPS trusts the webpki roots
//! (Mozilla's list, built in), or, for a private CA, only the certificates of `--ca-cert FILE`
//! or else of `$SSL_CERT_FILE` (as curl's `--cacert` does). `HTTPS_PROXY`, `HTTP_PROXY` and
//! `ALL_PROXY` (with `NO_PROXY`) route requests through a proxy. `timeout` bounds a whole
//! exchange (connect, send, and every byte of the answer, so a server that drips its answer
//! past it times out); `connect_timeout` bounds connecting and the TLS handshake.
//!
//! The API key is held in an [`ApiKey`], which only this file reads: it goes into the
//! `Authorization` header and nowhere else (its `Debug` shows `ApiKey(***)`); ureq never sends
//! it on to another host after a redirect. No ureq type leaves this file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A bearer token. Shown as `***` by `Debug`; read only to build the `Authorization` header.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> Self {
        Self(key)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Longest whole exchange: connect, send, and the complete answer.
    pub timeout: Duration,
    /// Longest connect, TLS handshake included.
    pub connect_timeout: Duration,
    /// PEM file of the CA certificates to trust instead of the built-in roots; `None` reads
    /// `$SSL_CERT_FILE`, and without it the built-in roots are used.
    pub ca_cert: Option<PathBuf>,
    /// Idle connections kept open per server (the request concurrency).
    pub pool: usize,
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// `Retry-After` in seconds, when the server sent one.
    pub retry_after: Option<f64>,
    pub body: Vec<u8>,
}

/// Why a request got no complete response.
#[derive(Debug)]
pub enum TransportError {
    /// Connecting or answering took longer than the timeout.
    Timeout(String),
    /// Refused, reset, closed early, body cut short or unparsable response: worth a retry.
    Connection(String),
    /// The TLS handshake failed (untrusted certificate, or TLS spoken to a plain-HTTP port and
    /// back): retrying does not help.
    Tls(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Timeout(m) => write!(f, "timed out: {m}"),
            TransportError::Connection(m) => write!(f, "connection error: {m}"),
            TransportError::Tls(m) => write!(
                f,
                "TLS error: {m} (for a server whose certificate a private CA signed, pass the \
                 CA's PEM file with --ca-cert or SSL_CERT_FILE; check http:// against https://)"
            ),
        }
    }
}

/// Largest answer read, in bytes (a chat answer with logprobs is some kilobytes).
const MAX_BODY: u64 = 256 << 20;

/// A shared connection pool and the API key.
pub struct Transport {
    agent: ureq::Agent,
    key: Option<ApiKey>,
}

impl Transport {
    pub fn new(cfg: &TransportConfig, key: Option<ApiKey>) -> Result<Self> {
        let roots = match trusted_ca_file(cfg.ca_cert.as_deref()) {
            Some((file, from)) => ureq::tls::RootCerts::new_with_certs(
                &read_ca_file(&file).with_context(|| format!("{from} {}", file.display()))?,
            ),
            None => ureq::tls::RootCerts::WebPki,
        };
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .proxy(ureq::Proxy::try_from_env())
            .http_status_as_error(false)
            .timeout_per_call(Some(cfg.timeout))
            .timeout_connect(Some(cfg.connect_timeout.min(cfg.timeout)))
            .max_idle_connections_per_host(cfg.pool.max(1))
            .max_idle_connections(cfg.pool.max(1) * 4)
            .user_agent(concat!("cai/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self { agent, key })
    }

    /// POSTs the JSON `body` (or GETs when `None`) to `url` and reads the whole answer.
    pub fn send(&self, url: &str, body: Option<&[u8]>) -> Result<Response, TransportError> {
        let auth = self.key.as_ref().map(|k| format!("Bearer {}", k.0));
        let sent = match body {
            Some(b) => {
                let mut r = self
                    .agent
                    .post(url)
                    .header("Accept", "application/json")
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(b)
            }
            None => {
                let mut r = self.agent.get(url).header("Accept", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
        };
        let mut answer = sent.map_err(classify)?;
        let status = answer.status().as_u16();
        // Only the delay-seconds form; an HTTP date falls back to our own backoff.
        let retry_after = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        let body = answer
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| match classify(e) {
                TransportError::Connection(m) => {
                    TransportError::Connection(format!("reading the answer (cut short?): {m}"))
                }
                other => other,
            })?;
        Ok(Response {
            status,
            retry_after,
            body,
        })
    }
}

/// The CA file to trust and where its name came from: `--ca-cert`, else `$SSL_CERT_FILE`.
fn trusted_ca_file(flag: Option<&Path>) -> Option<(PathBuf, &'static str)> {
    match flag {
        Some(f) => Some((f.to_path_buf(), "--ca-cert")),
        None => std::env::var_os("SSL_CERT_FILE")
            .filter(|v| !v.is_empty())
            .map(|v| (PathBuf::from(v), "SSL_CERT_FILE")),
    }
}

/// Every certificate of a PEM file; an unreadable file or one without certificates is an error.
fn read_ca_file(file: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(file).context("cannot read the CA certificate file")?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let ureq::tls::PemItem::Certificate(c) =
            item.context("not a valid PEM file of CA certificates")?
        {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        bail!("no `BEGIN CERTIFICATE` block: expected the PEM file of the CA certificates");
    }
    Ok(certs)
}

/// Sorts a ureq error into what the retry loop needs to know.
fn classify(e: ureq::Error) -> TransportError {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Timeout(t) => TransportError::Timeout(t.to_string()),
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => TransportError::Timeout(io.to_string()),
            // rustls reports a failed handshake (bad certificate, plain HTTP on the other
            // end) as invalid data; nothing else on this path does.
            ErrorKind::InvalidData => TransportError::Tls(io.to_string()),
            _ => TransportError::Connection(io.to_string()),
        },
        e @ (ureq::Error::Tls(_) | ureq::Error::Pem(_) | ureq::Error::Rustls(_)) => {
            TransportError::Tls(e.to_string())
        }
        other => TransportError::Connection(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_shows_in_debug() {
        let k = ApiKey::new("sk-very-secret".into());
        assert_eq!(format!("{k:?}"), "ApiKey(***)");
        assert!(!format!("{:?}", Some(k)).contains("secret"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let cfg = TransportConfig {
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            ca_cert: Some(f.clone()),
            pool: 1,
        };
        let e = format!("{:#}", Transport::new(&cfg, None).err().unwrap());
        assert!(
            e.contains("--ca-cert") && e.contains("ca.pem") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );
        let cfg = TransportConfig {
            ca_cert: Some(dir.path().join("missing.pem")),
            ..cfg
        };
        let e = format!("{:#}", Transport::new(&cfg, None).err().unwrap());
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
    }
}
