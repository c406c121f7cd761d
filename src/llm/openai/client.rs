//! Fault-tolerant JSON calls to one or several servers: load spreading, per-request timeout,
//! retries with exponential backoff and jitter on timeouts, connection errors, 429 and 5xx
//! (honouring `Retry-After`) and answers that are not JSON, and counters of what happened.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::base_url::BaseUrl;
use super::transport::{Response, Transport, TransportError};

/// When and how often to retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// First backoff in seconds; doubled each retry.
    pub backoff_s: f64,
    /// Longest wait between attempts in seconds (also caps `Retry-After`).
    pub max_backoff_s: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 6,
            backoff_s: 0.5,
            max_backoff_s: 60.0,
        }
    }
}

impl RetryPolicy {
    /// Wait before retry number `attempt` (0-based): the server's `Retry-After` when given,
    /// else `backoff_s * 2^attempt` with "full jitter" in [50%, 100%], both capped.
    pub fn delay(&self, attempt: u32, retry_after: Option<f64>, jitter: f64) -> Duration {
        let s = match retry_after {
            Some(s) => s.max(0.0),
            None => self.backoff_s * 2f64.powi(attempt.min(30) as i32) * (0.5 + 0.5 * jitter),
        };
        Duration::from_secs_f64(s.min(self.max_backoff_s))
    }
}

/// A server answered with an error status that retrying does not fix (4xx other than 429),
/// or the retries ran out on a retryable one.
#[derive(Debug, Clone)]
pub struct HttpStatus {
    pub server: String,
    pub path: String,
    pub status: u16,
    pub body: String,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.body.chars().take(300).collect();
        write!(
            f,
            "{}{} answered HTTP {}: {}",
            self.server, self.path, self.status, body
        )
    }
}

impl std::error::Error for HttpStatus {}

/// Counters, readable while requests run.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub timeouts: AtomicU64,
    pub connection_errors: AtomicU64,
    pub http_429: AtomicU64,
    pub http_5xx: AtomicU64,
    /// 2xx answers whose body is not JSON (cut short by a proxy, say); retried.
    pub invalid_json: AtomicU64,
    /// JSON answers without a field asked for (`logprobs`); retried.
    pub incomplete_answers: AtomicU64,
    pub failures: AtomicU64,
}

impl Counters {
    pub fn to_json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "requests": g(&self.requests),
            "retries": g(&self.retries),
            "timeouts": g(&self.timeouts),
            "connection_errors": g(&self.connection_errors),
            "http_429": g(&self.http_429),
            "http_5xx": g(&self.http_5xx),
            "invalid_json": g(&self.invalid_json),
            "incomplete_answers": g(&self.incomplete_answers),
            "failures": g(&self.failures),
        })
    }
}

/// JSON POST/GET against a rotating set of servers.
pub struct Client {
    servers: Vec<BaseUrl>,
    transport: Transport,
    timeout: Duration,
    policy: RetryPolicy,
    next: AtomicUsize,
    pub counters: Counters,
}

impl Client {
    pub fn new(
        servers: Vec<BaseUrl>,
        transport: Transport,
        timeout: Duration,
        policy: RetryPolicy,
    ) -> Self {
        Self {
            servers,
            transport,
            timeout,
            policy,
            next: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    /// The first server, for messages.
    pub fn server_name(&self) -> String {
        self.servers[0].to_string()
    }

    /// Counts a retry of attempt `attempt` (0-based) and waits its backoff; false (and no wait)
    /// once the retries are spent.
    pub fn pause_before_retry(&self, attempt: u32) -> bool {
        if attempt >= self.policy.retries {
            return false;
        }
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(self.policy.delay(attempt, None, jitter()));
        true
    }

    /// POSTs `body` (or GETs when `None`) to `path` and parses the JSON answer.
    ///
    /// Each attempt goes to the next server in turn, so load spreads and a retry avoids a
    /// server that just failed. Retried: timeouts, connection errors (bodies cut short
    /// included), 429, 5xx and 2xx answers that are not JSON; not retried: other statuses
    /// and TLS failures.
    pub fn call(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let mut attempt = 0u32;
        loop {
            let server =
                &self.servers[self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len()];
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = self
                .transport
                .send(&server.endpoint(path), bytes.as_deref());
            let (why, retry_after) = match outcome {
                Ok(r) if (200..300).contains(&r.status) => match serde_json::from_slice(&r.body) {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        self.counters.invalid_json.fetch_add(1, Ordering::Relaxed);
                        (
                            anyhow!(
                                "{server}{path} sent malformed JSON ({e}): {}",
                                String::from_utf8_lossy(&r.body)
                                    .chars()
                                    .take(200)
                                    .collect::<String>()
                            ),
                            None,
                        )
                    }
                },
                Ok(r) if r.status == 429 || r.status >= 500 => {
                    let c = if r.status == 429 {
                        &self.counters.http_429
                    } else {
                        &self.counters.http_5xx
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    (anyhow!(status_error(server, path, &r)), r.retry_after)
                }
                Ok(r) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(anyhow!(status_error(server, path, &r)));
                }
                Err(e @ TransportError::Tls(_)) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(anyhow!("{server}{path}: {e}"));
                }
                Err(e) => {
                    let c = match e {
                        TransportError::Timeout(_) => &self.counters.timeouts,
                        _ => &self.counters.connection_errors,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    (
                        anyhow!("{server}{path}: {e} (timeout {:?})", self.timeout),
                        None,
                    )
                }
            };
            if attempt >= self.policy.retries {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                return Err(why.context(format!(
                    "giving up after {} attempts ({} server(s): {})",
                    attempt + 1,
                    self.servers.len(),
                    self.servers
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(self.policy.delay(attempt, retry_after, jitter()));
            attempt += 1;
        }
    }
}

fn status_error(server: &BaseUrl, path: &str, r: &Response) -> HttpStatus {
    HttpStatus {
        server: server.to_string(),
        path: path.to_string(),
        status: r.status,
        body: String::from_utf8_lossy(&r.body).into_owned(),
    }
}

/// A number in [0, 1) that differs between threads and calls; jitter only, not for sampling.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy {
            retries: 5,
            backoff_s: 1.0,
            max_backoff_s: 10.0,
        };
        // jitter 1.0 -> full delay 1, 2, 4, 8, then the 10 s cap; jitter 0 -> half.
        let full: Vec<f64> = (0..5)
            .map(|a| p.delay(a, None, 1.0).as_secs_f64())
            .collect();
        assert_eq!(full, vec![1.0, 2.0, 4.0, 8.0, 10.0]);
        assert_eq!(p.delay(2, None, 0.0).as_secs_f64(), 2.0);
        // Retry-After wins over the backoff, still capped.
        assert_eq!(p.delay(0, Some(3.0), 0.5).as_secs_f64(), 3.0);
        assert_eq!(p.delay(0, Some(99.0), 0.5).as_secs_f64(), 10.0);
    }

    #[test]
    fn jitter_is_in_unit_interval() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
