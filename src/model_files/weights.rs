//! Loading model weights into memory with Hugging Face tensor names.
//!
//! Sources: a Hugging Face style folder (`config.json` plus `model.safetensors` or
//! sharded `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`), a
//! llama.cpp GGUF file of any supported architecture (dequantized, renamed, and with what
//! llama.cpp's conversion changed undone), or seeded random initialisation for tests. Every loader returns
//! [`Weights`]: plain tensors in the requested dtype, which
//! [`ParamStore`](super::params::ParamStore) then splits into trainable and frozen ones.

use super::arch::ModelShape;
use super::config::{Family, LlamaConfig, TokenIds};
use crate::artifacts::{CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;

/// Weight tensors by Hugging Face name.
pub type Weights = HashMap<String, Tensor>;

/// The dtype and device of a weight set (of any one tensor: they share both).
pub fn dtype_device(weights: &Weights) -> Result<(DType, Device)> {
    weights
        .values()
        .next()
        .map(|t| (t.dtype(), t.device().clone()))
        .context("no weights")
}

/// A standard normal sample (Box-Muller), so that tests need no extra crate.
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Random weights for `cfg`: normal(0, `std`) matrices, unit norm weights, from `seed`.
pub fn init_random(
    cfg: &LlamaConfig,
    std: f64,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Weights> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Weights::new();
    for (name, shape) in cfg.weight_shapes() {
        let n: usize = shape.iter().product();
        let tensor = if shape.len() == 1 {
            Tensor::ones(shape, dtype, device)?
        } else {
            let values: Vec<f64> = (0..n).map(|_| std * normal(&mut rng)).collect();
            Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?
        };
        out.insert(name, tensor);
    }
    Ok(out)
}

/// Checks that `weights` holds every tensor `cfg` needs with the right shape, and drops
/// tensors the model does not use (e.g. a redundant `lm_head.weight` when tied).
pub fn check_weights(cfg: &LlamaConfig, mut weights: Weights) -> Result<Weights> {
    let mut out = Weights::new();
    for (name, shape) in cfg.weight_shapes() {
        let tensor = weights
            .remove(&name)
            .with_context(|| format!("missing weight tensor {name}"))?;
        ensure!(
            tensor.dims() == shape.as_slice(),
            "weight {name} has shape {:?}, the config needs {shape:?}",
            tensor.dims()
        );
        out.insert(name, tensor);
    }
    Ok(out)
}

/// Loads `config.json` and the safetensors weights of a Hugging Face style folder.
pub fn load_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<(LlamaConfig, Weights)> {
    let cfg = LlamaConfig::from_file(&dir.join(CONFIG_FILE))?;
    let files = safetensors_files(dir)?;
    let mut weights = Weights::new();
    for file in files {
        let tensors = candle_core::safetensors::load(&file, device)
            .with_context(|| format!("reading {}", file.display()))?;
        for (name, t) in tensors {
            weights.insert(name, t.to_dtype(dtype)?);
        }
    }
    let weights =
        check_weights(&cfg, weights).with_context(|| format!("loading {}", dir.display()))?;
    Ok((cfg, weights))
}

/// The weight files of a folder: `model.safetensors`, or the shards listed in the index.
fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    let text = std::fs::read_to_string(&index_path).with_context(|| {
        format!(
            "{} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}",
            dir.display()
        )
    })?;
    let index: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index_path.display()))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no weight_map", index_path.display()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// llama.cpp's permutation of q/k rows, `w.reshape(n_head, 2, head_dim/2, dim)
/// .swapaxes(1, 2)`: turns Hugging Face's half-split rotary layout into interleaved pairs.
pub fn permute_for_gguf(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, dim) = w.dims2()?;
    ensure!(
        rows % (2 * n_head) == 0,
        "rows {rows} not divisible by 2·{n_head}"
    );
    Ok(w.reshape((n_head, 2, rows / n_head / 2, dim))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, dim))?)
}

/// Inverse of [`permute_for_gguf`]: restores Hugging Face's q/k row order.
pub fn unpermute_from_gguf(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, dim) = w.dims2()?;
    ensure!(
        rows % (2 * n_head) == 0,
        "rows {rows} not divisible by 2·{n_head}"
    );
    Ok(w.reshape((n_head, rows / n_head / 2, 2, dim))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, dim))?)
}

/// Hugging Face name of a GGUF tensor of a `family` model, `None` for tensors the model does
/// not use.
pub fn hf_name(family: Family, gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, tensor) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (tensor, kind) = tensor.rsplit_once('.')?;
    let sandwich = family == Family::Gemma3;
    let module = match tensor {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        // Phi-3 stores gate and up as one `ffn_up` (gate rows first), as transformers does.
        "ffn_up" if family == Family::Phi3 => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" if sandwich => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" if sandwich => "post_attention_layernorm",
        "post_ffw_norm" if sandwich => "post_feedforward_layernorm",
        _ => return None,
    };
    match kind {
        "weight" | "bias" => Some(format!("model.layers.{layer}.{module}.{kind}")),
        _ => None,
    }
}

/// Reads the hyper-parameters of a GGUF file into a [`LlamaConfig`] of its family, with
/// the engine's reading of the metadata ([`ModelShape::read`]).
fn gguf_config(content: &gguf_file::Content, path: &Path) -> Result<LlamaConfig> {
    let shape = ModelShape::read(content, path)?;
    let family = Family::from_arch(shape.arch.arch);
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .context("GGUF file has no token_embd.weight")?;
    let (vocab_size, hidden_size) = embd.shape.dims2()?;
    ensure!(
        shape.hidden == hidden_size,
        "token_embd width {hidden_size} != embedding_length {}",
        shape.hidden
    );
    let down = content
        .tensor_infos
        .get("blk.0.ffn_down.weight")
        .context("GGUF file has no blk.0.ffn_down.weight")?;
    let intermediate = down.shape.dims2()?.1;
    let mut cfg = LlamaConfig::for_family(
        family,
        [
            vocab_size,
            shape.hidden,
            intermediate,
            shape.layers,
            shape.heads,
            shape.kv_heads,
        ],
    );
    let t = &shape.arch;
    // GGUF stores these as f32: written back as the decimal the file meant (1e-6, not
    // 9.99999997e-7).
    let decimal = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::from(x));
    cfg.rms_norm_eps = decimal(shape.rms_eps as f32);
    cfg.rope_theta = decimal(t.rope.theta);
    cfg.max_position_embeddings = shape.context;
    if shape.head_dim * shape.heads != shape.hidden {
        cfg.head_dim = Some(shape.head_dim);
    }
    if t.rope.freq_scale != 1.0 {
        let factor = 1.0 / f64::from(t.rope.freq_scale);
        cfg.rope_scaling = Some(serde_json::json!({"rope_type": "linear", "factor": factor}));
    }
    cfg.final_logit_softcapping = t.final_softcap.map(f64::from);
    if family == Family::Gemma3 {
        cfg.query_pre_attn_scalar = t.attn_scale.map(|s| 1.0 / f64::from(s).powi(2));
        cfg.rope_local_base_freq = Some(decimal(t.rope_local.theta));
        cfg.sliding_window = t.sliding_window;
        cfg.sliding_window_pattern = None;
        cfg.layer_types = Some(
            t.local_layers
                .iter()
                .map(|&local| match local {
                    true => "sliding_attention".to_string(),
                    false => "full_attention".to_string(),
                })
                .collect(),
        );
    }
    cfg.tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
    let md = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
    cfg.bos_token_id = md("tokenizer.ggml.bos_token_id");
    cfg.eos_token_id = md("tokenizer.ggml.eos_token_id").map(TokenIds::One);
    Ok(cfg)
}

/// Llama 3 rope scaling from a GGUF file's `rope_freqs` divisors: llama.cpp stores only the
/// divisors, so the `rope_scaling` of the published Llama 3.1 / 3.2 configs (low 1, high 4,
/// 8192 original positions; factor 8 or 32) is taken when it reproduces them.
fn llama3_scaling(cfg: &LlamaConfig, divisors: &[f32]) -> Result<serde_json::Value> {
    let factor = divisors.iter().copied().fold(1f32, f32::max);
    let scaling = serde_json::json!({"rope_type": "llama3", "factor": factor,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192});
    let mut probe = cfg.clone();
    probe.rope_scaling = Some(scaling.clone());
    let rebuilt = probe.rope_divisors()?.unwrap_or_default();
    let matches = rebuilt.len() == divisors.len()
        && rebuilt
            .iter()
            .zip(divisors)
            .all(|(a, b)| (a - b).abs() <= 1e-4 * b.abs().max(1.0));
    ensure!(
        matches,
        "its rope_freqs divisors are not Llama 3.1/3.2's rope scaling; train from the \
         model's Hugging Face folder instead"
    );
    Ok(scaling)
}

/// Loads a llama.cpp GGUF file: config from the metadata, every tensor dequantized to
/// `dtype` under its Hugging Face name, with what llama.cpp's conversion changed undone (q/k
/// rows back to Hugging Face order for the llama graph; Gemma's norm weights back to `w` from
/// the stored `1 + w`).
pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<(LlamaConfig, Weights)> {
    let (mut file, content) = super::gguf_check::open(path)?;
    let mut cfg =
        gguf_config(&content, path).with_context(|| format!("reading {}", path.display()))?;
    let family = cfg.family()?;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        let divisors: Vec<f32> = content
            .tensor(&mut file, "rope_freqs.weight", device)?
            .dequantize(device)?
            .flatten_all()?
            .to_vec1()?;
        cfg.rope_scaling = Some(
            llama3_scaling(&cfg, &divisors)
                .with_context(|| format!("cannot train from {}", path.display()))?,
        );
    }
    cfg.validate()
        .with_context(|| format!("reading {}", path.display()))?;
    let mut weights = Weights::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for gguf_name in names {
        let Some(name) = hf_name(family, gguf_name) else {
            continue;
        };
        let qtensor = content
            .tensor(&mut file, gguf_name, device)
            .with_context(|| format!("reading tensor {gguf_name}"))?;
        let mut tensor = qtensor
            .dequantize(device)
            .with_context(|| format!("dequantizing {gguf_name}"))?;
        if family.gguf_permutes_qk() && name.ends_with("q_proj.weight") {
            tensor = unpermute_from_gguf(&tensor, cfg.num_attention_heads)?;
        } else if family.gguf_permutes_qk() && name.ends_with("k_proj.weight") {
            tensor = unpermute_from_gguf(&tensor, cfg.kv_heads())?;
        } else if cfg.norm_offset() != 0.0 && name.ends_with("norm.weight") {
            tensor = (tensor - cfg.norm_offset())?;
        }
        weights.insert(name, tensor.to_dtype(dtype)?);
    }
    if weights.is_empty() {
        bail!("{} holds no model tensors", path.display());
    }
    let weights =
        check_weights(&cfg, weights).with_context(|| format!("loading {}", path.display()))?;
    Ok((cfg, weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_permutation_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 48.0, &dev)?.reshape((12, 4))?;
        let p = permute_for_gguf(&w, 3)?;
        assert_ne!(p.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        // Head 0 has rows 0..4 = [x0, x1 | y0, y1]; llama.cpp interleaves them.
        let first_col: Vec<f32> = p.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
        assert_eq!(&first_col[..4], &[0.0, 8.0, 4.0, 12.0]);
        assert_eq!(
            unpermute_from_gguf(&p, 3)?.to_vec2::<f32>()?,
            w.to_vec2::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn maps_gguf_names() {
        let name = |f, n| hf_name(f, n).unwrap_or_default();
        assert_eq!(
            name(Family::Llama, "blk.3.attn_k.weight"),
            "model.layers.3.self_attn.k_proj.weight"
        );
        assert_eq!(
            name(Family::Llama, "blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(name(Family::Llama, "output.weight"), "lm_head.weight");
        assert!(hf_name(Family::Llama, "rope_freqs.weight").is_none());
        // Gemma's four norms per block.
        assert_eq!(
            name(Family::Gemma3, "blk.1.ffn_norm.weight"),
            "model.layers.1.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            name(Family::Gemma3, "blk.1.post_attention_norm.weight"),
            "model.layers.1.post_attention_layernorm.weight"
        );
        assert_eq!(
            name(Family::Gemma3, "blk.1.post_ffw_norm.weight"),
            "model.layers.1.post_feedforward_layernorm.weight"
        );
        assert_eq!(
            name(Family::Qwen2, "blk.2.attn_v.bias"),
            "model.layers.2.self_attn.v_proj.bias"
        );
        assert_eq!(
            name(Family::Phi3, "blk.0.ffn_up.weight"),
            "model.layers.0.mlp.gate_up_proj.weight"
        );
        assert_eq!(
            name(Family::Phi3, "blk.0.attn_qkv.weight"),
            "model.layers.0.self_attn.qkv_proj.weight"
        );
    }

    #[test]
    fn loads_sharded_folders_and_drops_unused_tensors() -> Result<()> {
        let dev = Device::Cpu;
        let mut cfg = LlamaConfig::new(16, 8, 16, 2, 2, 1);
        cfg.tie_word_embeddings = true;
        let weights = init_random(&cfg, 0.1, 1, DType::F32, &dev)?;
        let dir = tempfile::tempdir()?;
        cfg.to_file(&dir.path().join(CONFIG_FILE))?;
        let (mut first, mut second) = (Weights::new(), Weights::new());
        let mut map = serde_json::Map::new();
        for (i, (name, t)) in weights.iter().enumerate() {
            let (shard, file) = if i % 2 == 0 {
                (&mut first, "model-00001-of-00002.safetensors")
            } else {
                (&mut second, "model-00002-of-00002.safetensors")
            };
            shard.insert(name.clone(), t.to_dtype(DType::BF16)?);
            map.insert(name.clone(), file.into());
        }
        // A redundant lm_head (tied config) is ignored.
        second.insert(
            "lm_head.weight".into(),
            Tensor::zeros((16, 8), DType::BF16, &dev)?,
        );
        candle_core::safetensors::save(
            &first,
            dir.path().join("model-00001-of-00002.safetensors"),
        )?;
        candle_core::safetensors::save(
            &second,
            dir.path().join("model-00002-of-00002.safetensors"),
        )?;
        let index = serde_json::json!({ "weight_map": map });
        std::fs::write(dir.path().join(WEIGHTS_INDEX_FILE), index.to_string())?;
        let (loaded_cfg, loaded) = load_hf_dir(dir.path(), DType::F32, &dev)?;
        assert_eq!(loaded_cfg, cfg);
        assert_eq!(loaded.len(), weights.len());
        for (name, t) in &weights {
            let expected = t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
            let diff = (&loaded[name] - expected)?
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{name}");
        }
        Ok(())
    }
}
