//! A minimal blocking HTTP/1.1 client for JSON APIs over plain TCP.
//!
//! OpenAI-compatible inference servers (vLLM, llama.cpp server, mistralrs-server, Ollama) are
//! normally reached over `http://` on a private network; this client speaks exactly what they
//! need (one request per connection, `Content-Length` or chunked bodies) with no dependency.
//! `https://` is refused with a clear error: put a TLS-terminating proxy in front instead.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A parsed `http://host:port/prefix` base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" or "/v1", …).
    pub prefix: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = match url.strip_prefix("http://") {
            Some(r) => r,
            None if url.starts_with("https://") => {
                return Err(format!(
                    "{url}: https is not supported; reach the server over http on a private \
                     network or through a local TLS-terminating proxy"
                ))
            }
            None => return Err(format!("{url}: expected a URL starting with http://")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{url}: bad port `{p}`"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// The server root as text, for error messages and counters.
    pub fn display(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.prefix)
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// `Retry-After` in seconds, when the server sent one.
    pub retry_after: Option<f64>,
    pub body: Vec<u8>,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum TransportError {
    /// The connection or a read/write timed out.
    Timeout(String),
    /// Refused, reset, closed early or unparsable response.
    Connection(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Timeout(m) => write!(f, "timed out: {m}"),
            TransportError::Connection(m) => write!(f, "connection error: {m}"),
        }
    }
}

fn io_err(what: &str, e: std::io::Error) -> TransportError {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            TransportError::Timeout(format!("{what}: {e}"))
        }
        _ => TransportError::Connection(format!("{what}: {e}")),
    }
}

/// Sends one request (`body` = JSON, or none for GET) and reads the whole response.
///
/// `timeout` bounds the connect and every read and write.
pub fn request(
    base: &BaseUrl,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<Response, TransportError> {
    let addr = (base.host.as_str(), base.port)
        .to_socket_addrs()
        .map_err(|e| io_err("resolving host", e))?
        .next()
        .ok_or_else(|| TransportError::Connection(format!("no address for {}", base.host)))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| io_err("connecting", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| io_err("setting timeouts", e))?;
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: application/json\r\n",
        base.prefix, base.host, base.port
    );
    if let Some(key) = bearer {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body.unwrap_or_default());
    stream
        .write_all(&msg)
        .map_err(|e| io_err("sending request", e))?;
    read_response(BufReader::new(stream))
}

/// Parses a response: status line, headers, then a `Content-Length`, chunked or
/// read-to-close body.
pub fn read_response(mut r: impl BufRead) -> Result<Response, TransportError> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| io_err("reading status line", e))?;
    if line.is_empty() {
        return Err(TransportError::Connection(
            "server closed the connection without a response".into(),
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| TransportError::Connection(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut retry_after) = (None, false, None);
    loop {
        line.clear();
        r.read_line(&mut line)
            .map_err(|e| io_err("reading headers", e))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            // Only the delay-seconds form; an HTTP date falls back to our own backoff.
            "retry-after" => retry_after = value.parse::<f64>().ok(),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)
                .map_err(|e| io_err("reading chunk size", e))?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| TransportError::Connection(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .map_err(|e| io_err("reading chunk", e))?;
            line.clear();
            r.read_line(&mut line)
                .map_err(|e| io_err("reading chunk end", e))?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)
            .map_err(|e| io_err("reading body (connection closed early?)", e))?;
    } else {
        r.read_to_end(&mut body)
            .map_err(|e| io_err("reading body", e))?;
    }
    Ok(Response {
        status,
        retry_after,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let b = BaseUrl::parse("http://127.0.0.1:8089/v1/").unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.prefix.as_str()),
            ("127.0.0.1", 8089, "/v1")
        );
        assert_eq!(BaseUrl::parse("http://localhost").unwrap().port, 80);
        assert!(BaseUrl::parse("https://api.example.com")
            .unwrap_err()
            .contains("https is not supported"));
        assert!(BaseUrl::parse("127.0.0.1:80").is_err());
    }

    #[test]
    fn reads_length_chunked_and_retry_after() {
        let raw = b"HTTP/1.1 429 Too Many\r\nRetry-After: 2\r\nContent-Length: 2\r\n\r\nhi";
        let r = read_response(&raw[..]).unwrap();
        assert_eq!(
            (r.status, r.retry_after, r.body.as_slice()),
            (429, Some(2.0), &b"hi"[..])
        );
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(read_response(&raw[..]).unwrap().body, b"abcde");
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert!(matches!(
            read_response(&cut[..]),
            Err(TransportError::Connection(_))
        ));
        assert!(read_response(&b""[..]).is_err());
    }
}
