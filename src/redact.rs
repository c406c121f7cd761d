//! Credentials never leave cai: URLs with a user-info part (`user:password@host`) are shown
//! and written with it replaced by `***`, in messages, manifests and a pipeline's files.

use serde_json::Value;

/// `url` with its user-info (`user:password@` before the host) replaced by `***@`, so a
/// credential typed into a URL never reaches a message, log or manifest. Text without a
/// user-info comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

/// Replaces the user-info of every URL among `v`'s strings (at any depth) by `***`.
pub fn redact_json(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("://") => *s = redact_url(s),
        Value::Array(a) => a.iter_mut().for_each(redact_json),
        Value::Object(o) => o.values_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_at_any_depth_lose_their_credentials() {
        let mut v = serde_json::json!({
            "label": {"base_urls": ["http://u:sk-1@h:8/v1", "http://h/a@b"]},
            "note": "plain text @ here",
        });
        redact_json(&mut v);
        assert_eq!(v["label"]["base_urls"][0], "http://***@h:8/v1");
        assert_eq!(v["label"]["base_urls"][1], "http://h/a@b");
        assert_eq!(v["note"], "plain text @ here");
    }
}
