//! Where a model is: `--model` resolved into a GGUF file or a model folder.
//!
//! `--model` takes `default` (the embedded SmolLM2-135M-Instruct GGUF), a path to a `.gguf`
//! file, a model folder, or a Hugging Face id (`org/name`) found in the local Hugging Face
//! cache.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// File name of the embedded default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the embedded default model.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// A resolved model location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    GgufFile(PathBuf),
    Folder(PathBuf),
}

/// Folders searched for the default model, in order.
pub fn model_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CAI_MODELS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("models"));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cache/cai/models"));
    }
    dirs
}

/// The first of `names` found in the [`model_dirs`], then in `extra`.
pub fn find_model_file(names: &[&str], extra: &[PathBuf]) -> Option<PathBuf> {
    model_dirs()
        .iter()
        .chain(extra)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

impl ModelSpec {
    /// Resolves the user's `--model` value.
    pub fn resolve(name: &str) -> Result<Self> {
        if name == "default" {
            let dirs = model_dirs();
            return find_model_file(&[DEFAULT_MODEL_FILE], &[])
                .map(Self::GgufFile)
                .with_context(|| {
                    format!(
                        "the default model {DEFAULT_MODEL_FILE} is not installed (looked in {}); \
                         run `bash scripts/fetch-model.sh` first",
                        dirs.iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
        }
        let path = Path::new(name);
        if path.is_file() {
            return Ok(Self::GgufFile(path.to_path_buf()));
        }
        if path.is_dir() {
            return Ok(Self::Folder(path.to_path_buf()));
        }
        if let Some(dir) = hf_cache_snapshot(name) {
            return Ok(Self::Folder(dir));
        }
        bail!(
            "model `{name}` not found: not a file, not a folder, and not a Hugging Face id in the \
             local cache (set HF_HOME or download it with `huggingface-cli download {name}`)"
        )
    }
}

/// The newest snapshot folder of `org/name` in the Hugging Face cache, if present.
fn hf_cache_snapshot(id: &str) -> Option<PathBuf> {
    let (org, name) = id.split_once('/')?;
    let home = std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/huggingface")))?;
    let snaps = home.join(format!("hub/models--{org}--{name}/snapshots"));
    let mut entries: Vec<_> = std::fs::read_dir(snaps).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    entries.last().map(|e| e.path())
}
