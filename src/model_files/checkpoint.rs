//! Model folders and training checkpoints on disk.
//!
//! A model folder is what Hugging Face tools read: `config.json` (llama) and
//! `model.safetensors` (Hugging Face names), plus caller-provided files such as
//! `tokenizer.json`. A LoRA checkpoint keeps the base weights in `model.safetensors`
//! and the adapters in `adapter.safetensors` / `adapter_config.json` (PEFT layout);
//! [`load_model_dir`] merges them on load and [`merge_checkpoint`] writes a merged copy.
//! A training checkpoint adds `trainer_state.json` and `optimizer.safetensors`.
//!
//! Folders are written under a temporary name and renamed into place, so an
//! interrupted save never damages the previous checkpoint.

use super::config::LlamaConfig;
use super::lora;
use super::weights::{self, Weights};
use crate::artifacts::{
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE,
    WEIGHTS_FILE,
};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

const RESERVED: [&str; 6] = [
    CONFIG_FILE,
    WEIGHTS_FILE,
    ADAPTER_WEIGHTS_FILE,
    ADAPTER_CONFIG_FILE,
    TRAINER_STATE_FILE,
    OPTIMIZER_FILE,
];

/// Extra files copied into a model folder: `(file name, contents)`.
pub type ExtraFiles<'a> = &'a [(&'a str, Vec<u8>)];

/// Writes a folder by filling a sibling temporary folder with `fill` and renaming it to
/// `dir` (replacing an existing `dir`).
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no folder name", dir.display()))?;
    let tmp = dir.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    fill(&tmp).with_context(|| format!("writing {}", dir.display()))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming into {}", dir.display()))
}

/// Writes `config.json`, `model.safetensors` and the extra files into the existing
/// folder `dir`.
pub fn write_model_files(
    dir: &Path,
    cfg: &LlamaConfig,
    weights: &Weights,
    extra_files: ExtraFiles,
) -> Result<()> {
    cfg.to_file(&dir.join(CONFIG_FILE))?;
    let path = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(weights, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    for (name, bytes) in extra_files {
        ensure!(
            !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.'),
            "extra file name {name:?} must be a plain file name"
        );
        ensure!(
            !RESERVED.contains(name),
            "extra file {name:?} would overwrite a checkpoint file"
        );
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Saves a plain (merged) model folder at `dir`.
pub fn save_model_dir(
    dir: &Path,
    cfg: &LlamaConfig,
    weights: &Weights,
    extra_files: ExtraFiles,
) -> Result<()> {
    write_dir_atomically(dir, |tmp| write_model_files(tmp, cfg, weights, extra_files))
}

/// Loads a model folder in `dtype`, merging LoRA adapters when the folder has them.
pub fn load_model_dir(dir: &Path, dtype: DType, device: &Device) -> Result<(LlamaConfig, Weights)> {
    let stored = load_model_dir_unmerged(dir, dtype, device)?;
    match stored.adapters {
        None => Ok((stored.config, stored.base)),
        Some((lora_cfg, adapters)) => {
            let merged = lora::merge_adapters(&stored.base, &adapters, &lora_cfg)
                .with_context(|| format!("merging the adapters of {}", dir.display()))?;
            Ok((stored.config, merged))
        }
    }
}

/// A model folder as stored: base weights and, for LoRA checkpoints, the adapters.
#[derive(Debug, Clone)]
pub struct StoredModel {
    /// The model configuration.
    pub config: LlamaConfig,
    /// The base weights.
    pub base: Weights,
    /// LoRA settings and adapter tensors, if the folder has them.
    pub adapters: Option<(lora::LoraConfig, Weights)>,
}

/// Loads a model folder without merging the adapters.
pub fn load_model_dir_unmerged(dir: &Path, dtype: DType, device: &Device) -> Result<StoredModel> {
    let (config, base) = weights::load_hf_dir(dir, dtype, device)?;
    let adapters = match lora::load_adapters(dir, device)? {
        Some((lora_cfg, adapters)) => Some((lora_cfg, to_dtype(adapters, dtype)?)),
        None => None,
    };
    Ok(StoredModel {
        config,
        base,
        adapters,
    })
}

fn to_dtype(weights: Weights, dtype: DType) -> Result<Weights> {
    weights
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
        .collect()
}

/// Writes a merged copy of the model folder `src` (LoRA or not) to `dst`, with the
/// files other than weights, adapters and training state copied as they are.
pub fn merge_checkpoint(src: &Path, dst: &Path) -> Result<()> {
    ensure!(src != dst, "merge_checkpoint needs distinct folders");
    let (cfg, merged) = load_model_dir(src, DType::F32, &Device::Cpu)?;
    let mut extra: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.file_type()?.is_file() && !RESERVED.contains(&name.as_str()) {
            extra.push((name, std::fs::read(entry.path())?));
        }
    }
    let extra: Vec<(&str, Vec<u8>)> = extra.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    save_model_dir(dst, &cfg, &merged, &extra)
}

/// Folder name of the checkpoint after `step` optimizer steps.
pub fn checkpoint_dir(out_dir: &Path, step: usize) -> PathBuf {
    out_dir.join(format!("checkpoint-{step}"))
}

/// The checkpoint with the highest step under `out_dir`, if any.
pub fn latest_checkpoint(out_dir: &Path) -> Result<Option<PathBuf>> {
    if !out_dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(out_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        if entry.path().join(TRAINER_STATE_FILE).exists()
            && best.as_ref().is_none_or(|(s, _)| step > *s)
        {
            best = Some((step, entry.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Largest absolute difference between two weight sets with the same names.
pub fn max_weight_difference(a: &Weights, b: &Weights) -> Result<f64> {
    let mut worst = 0f64;
    for (name, ta) in a {
        let Some(tb) = b.get(name) else {
            bail!("{name} missing from the second weight set");
        };
        let diff: Tensor = (ta.to_dtype(DType::F64)? - tb.to_dtype(DType::F64)?)?;
        worst = worst.max(diff.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?);
    }
    ensure!(a.len() == b.len(), "weight sets differ in size");
    Ok(worst)
}

/// A base model's weights in f32 with the sha256 of their file: a GGUF file, a folder with one,
/// or a Hugging Face / cai model folder (what every trainer loads as its start or reference).
/// The weights sit on the compute device (`crate::device`), where training runs.
pub fn load_base(model: &str) -> Result<(LlamaConfig, Weights, Option<String>)> {
    let device = crate::device::compute_device()?;
    match super::locate::ModelSpec::resolve(model)? {
        super::locate::ModelSpec::GgufFile(p) => {
            let (cfg, w) = weights::load_gguf(&p, DType::F32, &device)
                .with_context(|| format!("cannot load {}", p.display()))?;
            Ok((cfg, w, Some(crate::hash::sha256_file(&p)?)))
        }
        super::locate::ModelSpec::Folder(dir) => {
            let gguf = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "gguf"));
            if let Some(p) = gguf {
                let (cfg, w) = weights::load_gguf(&p, DType::F32, &device)?;
                return Ok((cfg, w, Some(crate::hash::sha256_file(&p)?)));
            }
            let (cfg, w) = load_model_dir(&dir, DType::F32, &device)
                .with_context(|| format!("cannot load {}", dir.display()))?;
            Ok((
                cfg,
                w,
                crate::hash::sha256_file(&dir.join(WEIGHTS_FILE)).ok(),
            ))
        }
    }
}
