//! A content-addressed disk cache of server answers, so an interrupted or repeated run never
//! pays for the same request twice.
//!
//! The key is sha256 over (model name, endpoint, full JSON request body). Every request is
//! cached, sampled ones included: the body holds the seed, so a cached sample is what the
//! server gave for that exact seed; servers that ignore seeds make a cached answer one valid
//! sample among many, which is what a re-run would have drawn anyway. Delete the folder (or
//! pass `--no-cache`) to draw fresh samples. Entries are written to a temporary file and
//! renamed, so a crash never leaves a half-written entry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Default cache folder: `~/.cache/cai/requests`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache/cai/requests")
}

pub struct RequestCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl RequestCache {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create request cache {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Key of one request.
    pub fn key(model: &str, path: &str, body: &Value) -> String {
        let mut h = Sha256::new();
        for part in [model, path, &body.to_string()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        format!("{:x}", h.finalize())
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// The cached answer, counting a hit or a miss. An unreadable entry is a miss.
    pub fn get(&self, key: &str) -> Option<Value> {
        let found = std::fs::read(self.file(key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let c = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn put(&self, key: &str, answer: &Value) -> Result<()> {
        let file = self.file(key);
        let dir = file.parent().expect("cache entries live in a subfolder");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = file.with_extension(format!("tmp{:?}", std::thread::current().id()));
        std::fs::write(&tmp, answer.to_string())
            .with_context(|| format!("cannot write cache entry {}", tmp.display()))?;
        std::fs::rename(&tmp, &file)
            .with_context(|| format!("cannot rename cache entry to {}", file.display()))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "dir": self.dir,
            "hits": self.hits.load(Ordering::Relaxed),
            "misses": self.misses.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let c = RequestCache::open(dir.path()).unwrap();
        let k = RequestCache::key("m", "/v1/chat/completions", &json!({"seed": 1}));
        assert_ne!(
            k,
            RequestCache::key("m", "/v1/chat/completions", &json!({"seed": 2}))
        );
        assert_ne!(
            k,
            RequestCache::key("m2", "/v1/chat/completions", &json!({"seed": 1}))
        );
        assert_eq!(c.get(&k), None);
        c.put(&k, &json!({"a": 1})).unwrap();
        assert_eq!(c.get(&k), Some(json!({"a": 1})));
        assert_eq!(c.to_json()["hits"], 1);
        assert_eq!(c.to_json()["misses"], 1);
    }
}
