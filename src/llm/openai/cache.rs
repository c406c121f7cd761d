//! A content-addressed disk cache of server answers, so an interrupted or repeated run never
//! pays for the same request twice.
//!
//! The key is sha256 over (model name, endpoint, full JSON request body), joined as
//! length-prefixed parts ([`crate::hash::Sha256Parts`]). Every request is
//! cached, sampled ones included: the body holds the seed, so a cached sample is what the
//! server gave for that exact seed; servers that ignore seeds make a cached answer one valid
//! sample among many, which is what a re-run would have drawn anyway. Delete the folder (or
//! pass `--no-cache`) to draw fresh samples. Entries are written to a temporary file and
//! renamed, so a crash never leaves a half-written entry. Answers from a private endpoint are
//! the user's: folders the cache creates are 0700 and entries 0600 (on unix).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use serde_json::{json, Value};

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
        private_dir(dir)
            .with_context(|| format!("cannot create request cache {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Key of one request.
    pub fn key(model: &str, path: &str, body: &Value) -> String {
        crate::hash::Sha256Parts::new()
            .part(model)
            .part(path)
            .json(body)
            .hex()
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
        private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let text = answer.to_string();
        crate::jsonl::replace_file(&file, true, |f| Ok(f.write_all(text.as_bytes())?))
            .context("cannot write a request cache entry")
    }

    pub fn to_json(&self) -> Value {
        json!({
            "dir": self.dir,
            "hits": self.hits.load(Ordering::Relaxed),
            "misses": self.misses.load(Ordering::Relaxed),
        })
    }
}

/// Creates `dir` and its missing parents, the ones created with mode 0700 on unix.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
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

    /// The key joins model, endpoint and body with the one sha256 rule (length-prefixed
    /// parts), so no model name can run into the endpoint: with NUL separators the two keys
    /// below hashed the same bytes `m\0/p\0x\0…`. The value is from Python:
    /// `sha256(f(b"m") + f(b"/v1/chat/completions") + f(b'{"seed":1}'))`, `f(b) = u64le(len(b)) + b`.
    #[test]
    fn request_cache_key_keeps_part_boundaries() {
        let body = json!({"seed": 1});
        assert_eq!(
            RequestCache::key("m", "/v1/chat/completions", &body),
            "52ba9e04fa97f93e0b2f548babeb5b229c19b5802968aaf31381bf86fc05d60e"
        );
        assert_ne!(
            RequestCache::key("m\0/p", "x", &body),
            RequestCache::key("m", "/p\0x", &body)
        );
    }

    #[cfg(unix)]
    #[test]
    fn request_cache_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let c = RequestCache::open(&root).unwrap();
        let k = RequestCache::key("m", "/v1/chat/completions", &json!({"seed": 1}));
        c.put(&k, &json!({"a": 1})).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // 0700 folders and 0600 files whatever the umask (which only removes bits, and the
        // usual 022 would have left the folders 0755 and the files 0644).
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(&k[..2])), 0o700);
        assert_eq!(mode(&root.join(&k[..2]).join(format!("{k}.json"))), 0o600);
        // Nothing but the entry is left in its folder (no temporary file).
        assert_eq!(std::fs::read_dir(root.join(&k[..2])).unwrap().count(), 1);
    }
}
