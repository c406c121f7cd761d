//! Run manifests: written next to every output so a run can be reproduced and resumed safely.
//!
//! The manifest holds the resolved config, seed, constitution and model hashes, counters and
//! timings. Its `fingerprint` covers everything that changes the records; resuming an output
//! written under another fingerprint is refused rather than mixing two runs in one file, with
//! the refusal naming what differs (a config field, the constitution, the model). A manifest
//! also marks its output as cai's: a non-empty output without one is the user's file and is
//! never written into.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jsonl::Existing;
use crate::redact::redact_json;

/// What a run records about the model it used (plain data, here at the bottom so that the
/// records do not import the engine; `llm` re-exports it for the backends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Backend name: "local", "mock", ….
    pub backend: String,
    /// The model as the user named it (path or id).
    pub name: String,
    /// sha256 of the weights file, when there is one file.
    pub sha256: Option<String>,
    /// Context window in tokens.
    pub context: usize,
}

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

/// What a record-writing stage finds at its output path before it writes.
#[derive(Debug)]
pub enum Prior {
    /// No output yet, or an empty one: the run starts from the first record.
    Fresh,
    /// An output of ours with records, and the manifest it was written under.
    Ours(Box<Manifest>),
}

/// Checks what `out` holds before a stage appends to it: absent or empty (then any manifest
/// beside it must be ours, as it is replaced), or a file with a manifest of ours beside it.
/// A non-empty file without one is the user's and refused, as is a symbolic link.
pub fn prior(out: &Path, flag: &str) -> Result<Prior> {
    let existing = crate::jsonl::check_output(out, flag)?;
    let path = manifest_path(out);
    let manifest = match crate::jsonl::check_output(&path, "the manifest")? {
        Existing::Missing => None,
        _ => Some(read(&path)?),
    };
    match (existing, manifest) {
        (Existing::Missing | Existing::Empty, _) => Ok(Prior::Fresh),
        (Existing::Bytes(n), None) => bail!(
            "{flag} {} already exists ({n} bytes) and is not an output of cai (no {} beside \
             it); cai never writes into a file it did not create: choose another path, e.g. {}",
            out.display(),
            path.display(),
            suggest(out).display()
        ),
        (Existing::Bytes(_), Some(m)) => Ok(Prior::Ours(Box::new(m))),
    }
}

/// Reads a manifest; a file that does not parse as one is named.
fn read(path: &Path) -> Result<Manifest> {
    let text = crate::inputs::read_text(path, crate::inputs::TEXT_CAP * 8, "manifest")?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a manifest of cai; it would be replaced: move it away",
            path.display()
        )
    })
}

/// `notes.txt` -> `notes.cai.jsonl`, a path beside `out` that does not exist yet.
fn suggest(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "out".into(), |s| s.to_string_lossy().into_owned());
    (0..)
        .map(|i| match i {
            0 => out.with_file_name(format!("{stem}.cai.jsonl")),
            i => out.with_file_name(format!("{stem}.cai-{i}.jsonl")),
        })
        .find(|p| !p.exists() && !manifest_path(p).exists())
        .expect("some name is free")
}

/// A JSON value in one short line, for naming a setting in a message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// The first 12 hex digits of a hash, or "none".
fn abbrev(h: Option<&str>) -> String {
    h.map_or("none".into(), |h| format!("{}…", &h[..h.len().min(12)]))
}

/// The config fields that differ between `old` and `new` (nested objects as `a.b`), except
/// those in `ignore` at the top level.
fn config_differences(
    prefix: &str,
    old: &Value,
    new: &Value,
    ignore: &[String],
    out: &mut Vec<String>,
) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                if prefix.is_empty() && ignore.iter().any(|i| i == k) {
                    continue;
                }
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let none = Value::Null;
                config_differences(
                    &name,
                    a.get(k).unwrap_or(&none),
                    b.get(k).unwrap_or(&none),
                    &[],
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!(
            "config field `{prefix}` differs: {} → {}",
            short(a),
            short(b)
        )),
        _ => {}
    }
}

impl Manifest {
    /// What differs between the run that wrote `self` and `new`, in the parts the fingerprint
    /// covers: the command, config fields (but those in `ignore`), the constitution and the
    /// model. Empty when only an input hashed without a record here (prompt templates) differs.
    pub fn differences(&self, new: &Manifest, ignore: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if self.command != new.command {
            out.push(format!(
                "it was written by `cai {}`, not `cai {}`",
                self.command, new.command
            ));
        }
        config_differences("", &self.config, &new.config, ignore, &mut out);
        let sha = |c: &Option<ConstitutionRef>| c.as_ref().map(|c| c.sha256.clone());
        let (a, b) = (sha(&self.constitution), sha(&new.constitution));
        if a != b {
            out.push(format!(
                "the constitution differs (sha256 {} → {})",
                abbrev(a.as_deref()),
                abbrev(b.as_deref())
            ));
        }
        let (a, b) = (&self.model, &new.model);
        if a.backend != b.backend {
            out.push(format!(
                "the backend differs: {} → {}",
                a.backend, b.backend
            ));
        } else if a.sha256 != b.sha256 {
            out.push(format!(
                "the model differs (sha256 {} → {})",
                abbrev(a.sha256.as_deref()),
                abbrev(b.sha256.as_deref())
            ));
        } else if a.sha256.is_none() && a.name != b.name {
            out.push(format!("the model differs: {} → {}", a.name, b.name));
        }
        out
    }

    /// Refuses to resume `out`, written under `self`, with the run `new` when their
    /// fingerprints differ, naming what differs.
    pub fn check_resume(&self, out: &Path, new: &Manifest, ignore: &[String]) -> Result<()> {
        if self.fingerprint == new.fingerprint {
            return Ok(());
        }
        let mut what = self.differences(new, ignore);
        if what.is_empty() {
            what.push(
                "the prompt templates, another hashed input, or the way this version of cai \
                 computes fingerprints differ"
                    .into(),
            );
        }
        bail!(
            "{} was written by another run ({}); resuming would mix two runs in one file: \
             choose another --out, or remove {} and {}",
            out.display(),
            what.join("; "),
            out.display(),
            manifest_path(out).display()
        )
    }

    /// Writes atomically (a fresh temporary file + rename), with every URL's credentials
    /// (`user:password@`) replaced by `***`.
    pub fn write(&self, out: &Path) -> Result<()> {
        let path = manifest_path(out);
        let mut shown = self.clone();
        redact_json(&mut shown.config);
        redact_json(&mut shown.stats);
        let text = serde_json::to_string_pretty(&shown)?;
        crate::jsonl::replace_file(&path, false, |f| Ok(f.write_all(text.as_bytes())?))
    }
}
