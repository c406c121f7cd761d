//! Low-rank adapters (LoRA) on the linear layers of the model.
//!
//! An adapted layer computes `x Wᵀ + (alpha / rank) · (x Aᵀ) Bᵀ` with `A: [rank, in]`
//! initialised like PEFT (uniform in ±1/√in) and `B: [out, rank]` zero, so a fresh
//! adapter leaves the model unchanged. Adapter tensors live next to the weight they
//! adapt (`model.layers.0.self_attn.q_proj.lora_A.weight`); on disk they use PEFT names
//! (`base_model.model.` prefix) in `adapter.safetensors` with an `adapter_config.json`.
//! No dropout is applied, which keeps training deterministic.

use super::config::LlamaConfig;
use crate::artifacts::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const PEFT_PREFIX: &str = "base_model.model.";

/// The linear layers of a decoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearKind {
    /// Fused query/key/value projection (Phi-3).
    QkvProj,
    /// Fused MLP gate and up projection (Phi-3).
    GateUpProj,
    /// Attention query projection.
    QProj,
    /// Attention key projection.
    KProj,
    /// Attention value projection.
    VProj,
    /// Attention output projection.
    OProj,
    /// MLP gate projection.
    GateProj,
    /// MLP up projection.
    UpProj,
    /// MLP down projection.
    DownProj,
}

impl LinearKind {
    /// The linear layers of a block of separate projections.
    const SEPARATE: [LinearKind; 7] = [
        LinearKind::QProj,
        LinearKind::KProj,
        LinearKind::VProj,
        LinearKind::OProj,
        LinearKind::GateProj,
        LinearKind::UpProj,
        LinearKind::DownProj,
    ];

    /// The linear layers of a block of fused projections.
    const FUSED: [LinearKind; 4] = [
        LinearKind::QkvProj,
        LinearKind::OProj,
        LinearKind::GateUpProj,
        LinearKind::DownProj,
    ];

    /// Every linear layer of a block of `cfg`'s model.
    pub fn of_model(cfg: &LlamaConfig) -> &'static [LinearKind] {
        match cfg.has_fused_projections() {
            true => &Self::FUSED,
            false => &Self::SEPARATE,
        }
    }

    /// The module name (`"q_proj"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LinearKind::QkvProj => "qkv_proj",
            LinearKind::GateUpProj => "gate_up_proj",
            LinearKind::QProj => "q_proj",
            LinearKind::KProj => "k_proj",
            LinearKind::VProj => "v_proj",
            LinearKind::OProj => "o_proj",
            LinearKind::GateProj => "gate_proj",
            LinearKind::UpProj => "up_proj",
            LinearKind::DownProj => "down_proj",
        }
    }

    /// Path of the module inside block `layer`, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn module_path(self, layer: usize) -> String {
        let parent = match self {
            LinearKind::QProj
            | LinearKind::KProj
            | LinearKind::VProj
            | LinearKind::OProj
            | LinearKind::QkvProj => "self_attn",
            _ => "mlp",
        };
        format!("model.layers.{layer}.{parent}.{}", self.name())
    }

    /// `(in, out)` sizes of the layer for `cfg`.
    pub fn dims(self, cfg: &LlamaConfig) -> (usize, usize) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let q = cfg.num_attention_heads * cfg.head_size();
        let kv = cfg.kv_heads() * cfg.head_size();
        match self {
            LinearKind::QkvProj => (h, q + 2 * kv),
            LinearKind::GateUpProj => (h, 2 * i),
            LinearKind::QProj => (h, q),
            LinearKind::KProj | LinearKind::VProj => (h, kv),
            LinearKind::OProj => (q, h),
            LinearKind::GateProj | LinearKind::UpProj => (h, i),
            LinearKind::DownProj => (i, h),
        }
    }
}

/// Settings of a LoRA run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of the update (default 8).
    pub rank: usize,
    /// Scale numerator: the update is multiplied by `alpha / rank` (default 16).
    pub alpha: f64,
    /// Adapted modules by name (default `q_proj`, `v_proj`); `"all"` means every linear
    /// layer of every block.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: vec!["q_proj".to_string(), "v_proj".to_string()],
        }
    }
}

impl LoraConfig {
    /// Multiplier `alpha / rank` of the low-rank update.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The adapted layer kinds of `model`, with `"all"` expanded.
    pub fn target_kinds(&self, model: &LlamaConfig) -> Result<Vec<LinearKind>> {
        if self.rank == 0 {
            bail!("lora rank must be positive");
        }
        let available = LinearKind::of_model(model);
        let mut kinds = Vec::new();
        for target in &self.targets {
            if target == "all" {
                return Ok(available.to_vec());
            }
            match available.iter().find(|k| k.name() == target) {
                Some(kind) => kinds.push(*kind),
                None => {
                    let names: Vec<&str> = available.iter().map(|k| k.name()).collect();
                    bail!(
                        "unknown lora target {target:?} for a {} model (expected \"all\" or \
                         one of {})",
                        model.model_type,
                        names.join(", ")
                    )
                }
            }
        }
        if kinds.is_empty() {
            bail!("lora targets must not be empty");
        }
        Ok(kinds)
    }

    /// Whether layers of this kind carry an adapter.
    pub fn adapts(&self, kind: LinearKind) -> bool {
        self.targets.iter().any(|t| t == "all" || t == kind.name())
    }
}

/// Fresh adapter tensors for every targeted layer: `A` random (seeded), `B` zero.
pub fn init_adapters(
    model: &LlamaConfig,
    lora: &LoraConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let kinds = lora.target_kinds(model)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for layer in 0..model.num_hidden_layers {
        for kind in &kinds {
            let (in_dim, out_dim) = kind.dims(model);
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f64> = (0..lora.rank * in_dim)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Tensor::from_vec(a, (lora.rank, in_dim), device)?.to_dtype(dtype)?;
            let b = Tensor::zeros((out_dim, lora.rank), dtype, device)?;
            let path = kind.module_path(layer);
            out.insert(format!("{path}.lora_A.weight"), a);
            out.insert(format!("{path}.lora_B.weight"), b);
        }
    }
    Ok(out)
}

/// Folds `scale · B · A` into the base weights and returns the merged weights (no
/// adapter tensors left).
pub fn merge_adapters(
    base: &HashMap<String, Tensor>,
    adapters: &HashMap<String, Tensor>,
    lora: &LoraConfig,
) -> Result<HashMap<String, Tensor>> {
    let mut merged = base.clone();
    for (name, a) in adapters {
        let Some(path) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let b = adapters
            .get(&format!("{path}.lora_B.weight"))
            .with_context(|| format!("adapter {path} has lora_A but no lora_B"))?;
        let weight_name = format!("{path}.weight");
        let w = merged
            .get(&weight_name)
            .with_context(|| format!("adapter {path} has no base weight {weight_name}"))?;
        let delta = (b.matmul(a)? * lora.scale())?.to_dtype(w.dtype())?;
        let new_w = (w + delta).with_context(|| format!("merging adapter into {weight_name}"))?;
        merged.insert(weight_name, new_w);
    }
    Ok(merged)
}

/// Writes `adapter.safetensors` (PEFT names) and `adapter_config.json` into `dir`.
pub fn save_adapters(
    dir: &Path,
    adapters: &HashMap<String, Tensor>,
    lora: &LoraConfig,
) -> Result<()> {
    let peft: HashMap<String, Tensor> = adapters
        .iter()
        .map(|(k, v)| (format!("{PEFT_PREFIX}{k}"), v.clone()))
        .collect();
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    candle_core::safetensors::save(&peft, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    // The adapted module names, from the adapters themselves (`…q_proj.lora_A.weight`).
    let mut modules: Vec<&str> = adapters
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight"))
        .filter_map(|path| path.rsplit('.').next())
        .collect();
    modules.sort_unstable();
    modules.dedup();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "target_modules": modules,
    });
    let path = dir.join(ADAPTER_CONFIG_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads the adapters written by [`save_adapters`]; `None` when `dir` has none.
pub fn load_adapters(
    dir: &Path,
    device: &Device,
) -> Result<Option<(LoraConfig, HashMap<String, Tensor>)>> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    if !config_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", config_path.display()))?;
    let field = |name: &str| {
        json.get(name)
            .with_context(|| format!("{} lacks {name:?}", config_path.display()))
    };
    let lora = LoraConfig {
        rank: field("r")?.as_u64().context("\"r\" must be an integer")? as usize,
        alpha: field("lora_alpha")?
            .as_f64()
            .context("\"lora_alpha\" must be a number")?,
        targets: serde_json::from_value(field("target_modules")?.clone())
            .context("\"target_modules\" must be a list of names")?,
    };
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&path, device)
        .with_context(|| format!("reading {}", path.display()))?;
    let adapters = tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix(PEFT_PREFIX).unwrap_or(&k).to_string(), v))
        .collect();
    Ok(Some((lora, adapters)))
}
