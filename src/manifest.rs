//! Run manifests: written next to every output so a run can be reproduced and resumed safely.
//!
//! The manifest holds the resolved config, seed, constitution and model hashes, counters and
//! timings. Its `fingerprint` covers everything that changes the records; resuming an output
//! written under another fingerprint is refused rather than mixing two runs in one file.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::llm::ModelInfo;

/// What a stage writes next to its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub cai_version: String,
    pub command: String,
    /// sha256 over config (minus output/tuning fields), constitution and model.
    pub fingerprint: String,
    pub config: Value,
    pub constitution: Option<ConstitutionRef>,
    pub model: ModelInfo,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    pub stats: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConstitutionRef {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// `X.jsonl` -> `X.jsonl.manifest.json`.
pub fn manifest_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// sha256 of the JSON of `parts`, hex.
pub fn sha256_of(parts: &[&Value]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.to_string().as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())
}

impl Manifest {
    /// Refuses to resume `out` if its manifest records another fingerprint.
    pub fn check_resume(out: &Path, fingerprint: &str) -> Result<()> {
        let path = manifest_path(out);
        if !path.exists() || !out.exists() {
            return Ok(());
        }
        let old: Manifest = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("{}: malformed manifest", path.display()))?;
        if old.fingerprint != fingerprint {
            bail!(
                "{} was written by a run with a different configuration, constitution or model \
                 (see {}); resuming would mix two runs: choose another --out or remove the file",
                out.display(),
                path.display()
            );
        }
        Ok(())
    }

    /// Writes atomically (temp file + rename).
    pub fn write(&self, out: &Path) -> Result<()> {
        let path = manifest_path(out);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }
}
