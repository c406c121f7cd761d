//! What the pipeline knows about its stages between runs: sha256 of files and folders, stage
//! fingerprints, and the `stages/<stage>.attempt.json` / `stages/<stage>.done.json` files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::plan::{Input, StagePlan};
use super::stage::Stage;
use crate::hash::{sha256_file, sha256_files, sha256_hex, sha256_json};
use crate::model_files::locate::ModelSpec;

/// A file or folder and its sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHash {
    pub path: PathBuf,
    pub sha256: String,
}

/// Written when a stage starts: a later run with the same fingerprint resumes its outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub stage: Stage,
    pub fingerprint: String,
    pub started_unix: u64,
}

/// Written when a stage has finished: a later run with the same fingerprint and intact
/// outputs skips it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub stage: Stage,
    pub fingerprint: String,
    pub cai_version: String,
    pub inputs: Vec<FileHash>,
    pub outputs: Vec<FileHash>,
    pub started_unix: u64,
    pub finished_unix: u64,
    /// Wall-clock seconds of this stage's last attempt.
    pub seconds: f64,
    /// Whether that attempt resumed outputs of an interrupted one.
    pub resumed: bool,
    /// The stage's counters (also in its own manifest or metrics file).
    pub summary: Value,
}

/// What happened to one stage in this invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum StageStatus {
    /// Done before with the same fingerprint, outputs intact.
    UpToDate,
    /// Ran now; `resumed` when it continued an interrupted attempt.
    Ran { seconds: f64, resumed: bool },
    /// Outside `--from`/`--until`.
    NotSelected,
    /// Failed now (the error is returned).
    Failed,
}

/// sha256 of a file, or of a folder: its files' relative paths and hashes, sorted; names
/// starting with `.` (partial writes) are left out.
pub fn hash_path(path: &Path) -> Result<String> {
    if path.is_file() {
        return sha256_file(path);
    }
    let mut files = Vec::new();
    list_files(path, path, &mut files)
        .with_context(|| format!("cannot read {}", path.display()))?;
    files.sort();
    sha256_files(path, &files)
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            list_files(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root)?.to_path_buf());
        }
    }
    Ok(())
}

/// The hash of each input; a missing input is an error naming the stage.
pub fn hash_inputs(plan: &StagePlan) -> Result<Vec<FileHash>> {
    let mut out = Vec::new();
    for input in &plan.inputs {
        let path = match input {
            Input::Path(p) => p.clone(),
            Input::Model(name) => match ModelSpec::resolve(name)
                .with_context(|| format!("stage `{}`: model", plan.stage))?
            {
                ModelSpec::GgufFile(p) | ModelSpec::Folder(p) => p,
            },
        };
        // A built-in constitution (`harmless`) named where no such file exists.
        if let Some(text) = crate::constitution::builtin(&path).filter(|_| !path.exists()) {
            let sha256 = sha256_hex(text.as_bytes());
            out.push(FileHash { path, sha256 });
            continue;
        }
        anyhow::ensure!(
            path.exists(),
            "stage `{}`: input {} is missing",
            plan.stage,
            path.display()
        );
        let sha256 = hash_path(&path)
            .with_context(|| format!("stage `{}`: hashing {}", plan.stage, path.display()))?;
        out.push(FileHash { path, sha256 });
    }
    Ok(out)
}

/// The hashes of the outputs, `None` if one is missing.
pub fn hash_outputs(plan: &StagePlan) -> Result<Option<Vec<FileHash>>> {
    let mut out = Vec::new();
    for path in &plan.outputs {
        if !path.exists() {
            return Ok(None);
        }
        out.push(FileHash {
            path: path.clone(),
            sha256: hash_path(path)?,
        });
    }
    Ok(Some(out))
}

/// sha256 over the stage, its resolved config (without the keys that never change its outputs,
/// paths in the run folder made relative to it), its inputs' hashes and the fingerprints of the
/// stages before it: a change anywhere upstream reruns every later stage.
pub fn stage_fingerprint(
    plan: &StagePlan,
    run_root: &Path,
    inputs: &[FileHash],
    upstream: &[String],
) -> Result<String> {
    let mut config = plan.config_json()?;
    normalize(
        &mut config,
        &run_root.to_string_lossy(),
        neutral_keys(plan.stage),
    );
    let hashes: Vec<&str> = inputs.iter().map(|f| f.sha256.as_str()).collect();
    let doc = json!({
        "stage": plan.stage,
        "config": config,
        "inputs": hashes,
        "upstream": upstream,
    });
    Ok(sha256_json(&[&doc]))
}

/// Config keys, at any depth, that do not change a stage's outputs: progress bars, the resume
/// flag, and the batch size of the record stages (whose records are the same whatever the
/// batching; in training it changes the steps).
fn neutral_keys(stage: Stage) -> &'static [&'static str] {
    match stage {
        Stage::Revise | Stage::Sample | Stage::Label => &["quiet", "batch_size"],
        _ => &["quiet", "resume"],
    }
}

fn normalize(v: &mut Value, run_root: &str, neutral: &[&str]) {
    match v {
        Value::Object(m) => {
            for k in neutral {
                m.remove(*k);
            }
            m.values_mut().for_each(|c| normalize(c, run_root, neutral));
        }
        Value::Array(a) => a.iter_mut().for_each(|c| normalize(c, run_root, neutral)),
        Value::String(s) => {
            if let Some(rest) = s.strip_prefix(run_root) {
                *s = format!("$RUN{rest}");
            }
        }
        _ => {}
    }
}

/// Reads a state file; `None` if it does not exist or does not parse (then it is redone).
pub fn read<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes a state file atomically (temp file + rename), URL credentials redacted.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut value = serde_json::to_value(value)?;
    crate::redact::redact_json(&mut value);
    std::fs::write(&tmp, serde_json::to_string_pretty(&value)? + "\n")
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// `<run>/stages/lock`, held while a pipeline runs in the folder: a second one is refused
/// instead of interleaving writes. A lock left by a process that no longer runs is taken over.
#[derive(Debug)]
pub struct Lock(PathBuf);

impl Lock {
    pub fn acquire(path: &Path) -> Result<Self> {
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    write!(f, "{}", std::process::id())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok(Self(path.to_path_buf()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = std::fs::read_to_string(path).unwrap_or_default();
                    let pid = pid.trim();
                    // Without /proc (not Linux) a lock cannot be checked and is respected.
                    let gone =
                        Path::new("/proc/self").exists() && !Path::new("/proc").join(pid).exists();
                    if !gone || pid.is_empty() {
                        bail!(
                            "another cai pipeline (pid {pid}) is running in this run folder; if                              none is, remove {}",
                            path.display()
                        );
                    }
                    remove(path)?;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        bail!("cannot take the lock {}", path.display())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes a file if present.
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_hash_covers_names_and_contents_but_not_partial_writes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().join("m");
        std::fs::create_dir_all(d.join("sub"))?;
        std::fs::write(d.join("a.txt"), "a")?;
        std::fs::write(d.join("sub/b.txt"), "b")?;
        let h = hash_path(&d)?;
        // The one sha256 rule over (relative path, file sha256) pairs, from Python:
        // `sha256(f(b"a.txt") + f(sha256(b"a").hex) + f(b"sub/b.txt") + f(sha256(b"b").hex))`
        // with `f(b) = u64le(len(b)) + b` (unix path separators).
        #[cfg(unix)]
        assert_eq!(
            h,
            "b2e90b7f54d4161e100c64fa3261142b9e82aba7679ba614fdf062ac2a24bb3b"
        );
        std::fs::create_dir(d.join(".x.partial"))?;
        std::fs::write(d.join(".x.partial/c"), "c")?;
        assert_eq!(hash_path(&d)?, h);
        std::fs::write(d.join("sub/b.txt"), "B")?;
        assert_ne!(hash_path(&d)?, h);
        Ok(())
    }

    #[test]
    fn run_folder_paths_and_flags_do_not_change_the_fingerprint() {
        let keys = neutral_keys(Stage::Label);
        let mut a = json!({"out": "/x/run/label/labels.jsonl", "quiet": true, "batch_size": 8});
        let mut b = json!({"out": "/y/r2/label/labels.jsonl", "quiet": false, "batch_size": 2});
        normalize(&mut a, "/x/run", keys);
        normalize(&mut b, "/y/r2", keys);
        assert_eq!(a, b);
        assert_eq!(a["out"], "$RUN/label/labels.jsonl");
        let mut sft = json!({"train": {"batch_size": 8}, "quiet": true});
        normalize(&mut sft, "/x/run", neutral_keys(Stage::Sft));
        assert_eq!(sft, json!({"train": {"batch_size": 8}}));
    }
}
