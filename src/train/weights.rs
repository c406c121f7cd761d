//! Loading model weights into memory with Hugging Face tensor names.
//!
//! Sources: a Hugging Face style folder (`config.json` plus `model.safetensors` or
//! sharded `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`), a
//! llama.cpp GGUF file (dequantized, renamed, and with llama.cpp's q/k row permutation
//! undone), or seeded random initialisation for tests. Every loader returns
//! [`Weights`]: plain tensors in the requested dtype, which
//! [`ParamStore`](super::params::ParamStore) then splits into trainable and frozen ones.

use super::config::{LlamaConfig, TokenIds};
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

/// File name of single-file weights in a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the shard index of sharded weights.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of the model config in a model folder.
pub const CONFIG_FILE: &str = "config.json";

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

/// Hugging Face name of a GGUF llama tensor, `None` for tensors the model does not use.
pub fn hf_name(gguf_name: &str) -> Option<String> {
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
    let module = match tensor {
        "attn_q.weight" => "self_attn.q_proj",
        "attn_k.weight" => "self_attn.k_proj",
        "attn_v.weight" => "self_attn.v_proj",
        "attn_output.weight" => "self_attn.o_proj",
        "ffn_gate.weight" => "mlp.gate_proj",
        "ffn_up.weight" => "mlp.up_proj",
        "ffn_down.weight" => "mlp.down_proj",
        "attn_norm.weight" => "input_layernorm",
        "ffn_norm.weight" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.weight"))
}

/// Reads the llama hyper-parameters of a GGUF file into a [`LlamaConfig`].
fn gguf_config(content: &gguf_file::Content) -> Result<LlamaConfig> {
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("llama");
    ensure!(arch == "llama", "unsupported GGUF architecture {arch:?}");
    let get = |key: &str| {
        md.get(key)
            .with_context(|| format!("GGUF metadata lacks {key}"))
    };
    let get_usize = |key: &str| -> Result<usize> { Ok(get(key)?.to_u64()? as usize) };
    let get_f64 = |key: &str| -> Result<f64> {
        let v = get(key)?;
        Ok(v.to_f32().map(f64::from).or_else(|_| v.to_f64())?)
    };
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .context("GGUF file has no token_embd.weight")?;
    let (vocab_size, hidden_size) = embd.shape.dims2()?;
    let mut cfg = LlamaConfig::new(
        vocab_size,
        get_usize("llama.embedding_length")?,
        get_usize("llama.feed_forward_length")?,
        get_usize("llama.block_count")?,
        get_usize("llama.attention.head_count")?,
        get_usize("llama.attention.head_count_kv")
            .or_else(|_| get_usize("llama.attention.head_count"))?,
    );
    ensure!(
        cfg.hidden_size == hidden_size,
        "token_embd width {hidden_size} != llama.embedding_length {}",
        cfg.hidden_size
    );
    if let Ok(eps) = get_f64("llama.attention.layer_norm_rms_epsilon") {
        cfg.rms_norm_eps = eps;
    }
    if let Ok(theta) = get_f64("llama.rope.freq_base") {
        cfg.rope_theta = theta;
    }
    if let Ok(n) = get_usize("llama.context_length") {
        cfg.max_position_embeddings = n;
    }
    if let Ok(d) = get_usize("llama.rope.dimension_count") {
        if d != cfg.head_size() {
            cfg.head_dim = Some(d);
        }
    }
    cfg.tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
    cfg.bos_token_id = get_usize("tokenizer.ggml.bos_token_id")
        .ok()
        .map(|id| id as u32);
    cfg.eos_token_id = get_usize("tokenizer.ggml.eos_token_id")
        .ok()
        .map(|id| TokenIds::One(id as u32));
    cfg.validate()?;
    Ok(cfg)
}

/// Loads a llama.cpp GGUF file: config from the metadata, every tensor dequantized to
/// `dtype` under its Hugging Face name, q/k rows restored to Hugging Face order.
pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<(LlamaConfig, Weights)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .with_context(|| format!("reading GGUF header of {}", path.display()))?;
    let cfg = gguf_config(&content).with_context(|| format!("reading {}", path.display()))?;
    let mut weights = Weights::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for gguf_name in names {
        let Some(name) = hf_name(gguf_name) else {
            continue;
        };
        let qtensor = content
            .tensor(&mut file, gguf_name, device)
            .with_context(|| format!("reading tensor {gguf_name}"))?;
        let mut tensor = qtensor
            .dequantize(device)
            .with_context(|| format!("dequantizing {gguf_name}"))?;
        if name.ends_with("q_proj.weight") {
            tensor = unpermute_from_gguf(&tensor, cfg.num_attention_heads)?;
        } else if name.ends_with("k_proj.weight") {
            tensor = unpermute_from_gguf(&tensor, cfg.kv_heads())?;
        }
        weights.insert(name, tensor.to_dtype(dtype)?);
    }
    if weights.is_empty() {
        bail!("{} holds no llama tensors", path.display());
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

    /// Interleaved RoPE on llama.cpp's permuted weights gives the same attention scores
    /// as Hugging Face RoPE on the original weights.
    #[test]
    fn permuted_weights_with_interleaved_rope_match_hf_rope() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, d, dim, t) = (2, 8, 6, 5);
        let w = Tensor::randn(0f32, 1.0, (heads * d, dim), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (t, dim), &dev)?;
        let (cos, sin) = super::super::ops::rope_tables(d, t, 10_000.0, DType::F32, &dev)?;
        let heads_of = |w: &Tensor| -> Result<Tensor> {
            let q = x.matmul(&w.t()?)?;
            Ok(q.reshape((1, t, heads, d))?.transpose(1, 2)?.contiguous()?)
        };
        let scores =
            |q: Tensor| -> Result<Vec<f32>> { Ok(q.matmul(&q.t()?)?.flatten_all()?.to_vec1()?) };
        let hf = candle_nn::rotary_emb::rope(&heads_of(&w)?, &cos, &sin)?;
        let gguf =
            candle_nn::rotary_emb::rope_i(&heads_of(&permute_for_gguf(&w, heads)?)?, &cos, &sin)?;
        for (a, b) in scores(hf)?.iter().zip(scores(gguf)?) {
            assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn maps_gguf_names() {
        assert_eq!(
            hf_name("blk.3.attn_k.weight").unwrap(),
            "model.layers.3.self_attn.k_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(hf_name("rope_freqs.weight").is_none());
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
