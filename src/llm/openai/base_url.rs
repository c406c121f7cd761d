//! Where requests go: the server root parsed from a `--base-url`, and the URL of an endpoint.
//!
//! Servers document their root in two ways: the bare host (`http://127.0.0.1:8080`, llama.cpp's
//! docs) or the OpenAI SDK's `base_url` with a trailing `/v1` (`https://api.openai.com/v1`,
//! vLLM's and Ollama's docs). Both are accepted, with or without a trailing slash, and behind a
//! gateway's path prefix (`https://gw.example.com/llm/v1`). The root keeps the prefix and drops
//! the `/v1`, so `/v1/chat/completions` and llama.cpp's unversioned `/tokenize` both resolve.

use std::fmt;

use crate::redact::redact_url;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed server root: `scheme://authority[prefix]`, without the OpenAI `/v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub scheme: Scheme,
    /// `host[:port]` as given (an IPv6 host in brackets).
    pub authority: String,
    /// Path before the API root, without a trailing slash or `/v1` ("" or "/gateway/llm").
    pub prefix: String,
}

impl BaseUrl {
    /// Parses a `--base-url`; the error names the URL and what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("--base-url {:?}: {why}", redact_url(url));
        let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err(bad(
                "expected http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]",
            ));
        };
        if rest.contains(['?', '#']) {
            return Err(bad("a server root has no query or fragment"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL would end up in logs and manifests; pass the key in the \
                 environment variable named by --api-key-env",
            ));
        }
        let (host, port) = match authority.rfind(':') {
            // `[::1]` alone has colons but no port.
            Some(i) if !authority[i..].contains(']') => {
                (&authority[..i], Some(&authority[i + 1..]))
            }
            _ => (authority, None),
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        if let Some(p) = port {
            if p.parse::<u16>().map_or(true, |n| n == 0) {
                return Err(bad(&format!("bad port {p:?}")));
            }
        }
        let mut prefix = path.trim_end_matches('/');
        if prefix.contains("//") {
            return Err(bad("empty path segment"));
        }
        if let Some(p) = prefix.strip_suffix("/v1") {
            prefix = p;
        }
        Ok(Self {
            scheme,
            authority: authority.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The full URL of `path` (which starts with `/`, e.g. `/v1/models` or `/tokenize`).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{self}{path}")
    }
}

impl fmt::Display for BaseUrl {
    /// The root as text, for messages and counters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(url: &str) -> String {
        BaseUrl::parse(url).unwrap().to_string()
    }

    #[test]
    fn trailing_v1_and_slashes_name_the_same_root() {
        for url in [
            "http://127.0.0.1:8097",
            "http://127.0.0.1:8097/",
            "http://127.0.0.1:8097/v1",
            "http://127.0.0.1:8097/v1/",
        ] {
            assert_eq!(root(url), "http://127.0.0.1:8097", "{url}");
        }
        let b = BaseUrl::parse("http://127.0.0.1:8097/v1").unwrap();
        assert_eq!(
            b.endpoint("/v1/models"),
            "http://127.0.0.1:8097/v1/models",
            "no /v1/v1"
        );
    }

    #[test]
    fn gateway_prefixes_are_kept() {
        let b = BaseUrl::parse("https://gw.example.com/team/llm/v1/").unwrap();
        assert_eq!(b.scheme, Scheme::Https);
        assert_eq!(b.prefix, "/team/llm");
        assert_eq!(
            b.endpoint("/v1/chat/completions"),
            "https://gw.example.com/team/llm/v1/chat/completions"
        );
        assert_eq!(
            b.endpoint("/tokenize"),
            "https://gw.example.com/team/llm/tokenize"
        );
        // A prefix that only ends in "v1" is not the version segment.
        assert_eq!(root("http://h/apiv1"), "http://h/apiv1");
    }

    #[test]
    fn ipv6_hosts_and_ports() {
        assert_eq!(root("http://[::1]:8000/v1"), "http://[::1]:8000");
        assert_eq!(BaseUrl::parse("https://[::1]").unwrap().authority, "[::1]");
    }

    #[test]
    fn bad_urls_are_named_with_the_reason() {
        for (url, why) in [
            ("127.0.0.1:8000", "expected http://"),
            ("ftp://h", "expected http://"),
            ("http://", "no host"),
            ("http://:80", "no host"),
            ("http://h:0", "bad port"),
            ("http://h:99999", "bad port"),
            ("http://h:x/v1", "bad port"),
            ("http://h/v1?x=1", "no query"),
            ("http://h//v1", "empty path segment"),
        ] {
            let e = BaseUrl::parse(url).unwrap_err();
            assert!(e.contains(why) && e.contains(url), "{url}: {e}");
        }
    }

    #[test]
    fn base_url_credentials_are_redacted_in_errors() {
        for (url, shown) in [
            ("https://user:sk-1@h", "https://***@h"),
            ("http://user:sk-secret@host/v1", "http://***@host/v1"),
            ("user:sk-secret@host:80", "***@host:80"),
            ("http://a@b:pw@host/x@y", "http://***@host/x@y"),
        ] {
            let e = BaseUrl::parse(url).unwrap_err();
            assert!(e.contains(shown), "{url}: {e}");
            assert!(
                !e.contains("sk-") && !e.contains("user") && !e.contains("pw"),
                "{e}"
            );
        }
        let e = BaseUrl::parse("https://user:sk-1@h").unwrap_err();
        assert!(e.contains("credentials"), "{e}");
        // No user-info: unchanged, an `@` in the path included.
        assert_eq!(redact_url("http://h:8/a@b"), "http://h:8/a@b");
        assert_eq!(redact_url("no url"), "no url");
    }
}
