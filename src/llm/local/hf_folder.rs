//! Hugging Face style model folders (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`) for the local backend: how `cai train` checkpoints become models
//! that every stage can run.
//!
//! The f32 weights are renamed to GGUF names and changed as llama.cpp's conversion changes
//! them (for the llama graph the q/k rows permuted to the interleaved rotary order
//! [`GgufModel`] computes in; Gemma's norm weights `w` stored as `1 + w`; Llama 3's rope
//! scaling as `rope_freqs` divisors), and the projection
//! matrices quantized to Q8_0 so decoding streams about a quarter of the f32 bytes (rows whose
//! width is not a multiple of the 32-value Q8_0 block, as in tiny test models, stay f32).
//! LoRA checkpoints are merged on load.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::gguf_model::GgufModel;
use crate::model_files::arch::ModelShape;
use crate::model_files::checkpoint::load_model_dir;
use crate::model_files::weights::{hf_name, permute_for_gguf};
use crate::model_files::{LlamaConfig, Weights};

/// Values per Q8_0 block: rows must be a multiple of it to be quantized.
const Q8_BLOCK: usize = 32;

impl GgufModel {
    /// Loads a Hugging Face style folder (LoRA adapters merged).
    pub fn load_hf_folder(dir: &Path, device: &Device, dense: bool) -> Result<Self> {
        let (cfg, weights) = load_model_dir(dir, DType::F32, &Device::Cpu)
            .with_context(|| format!("{}: cannot load the model folder", dir.display()))?;
        Self::from_hf_weights(&cfg, &weights, device, dense)
            .with_context(|| format!("{}: cannot build the model", dir.display()))
    }

    /// Builds the inference model from f32 weights in Hugging Face naming.
    pub fn from_hf_weights(
        cfg: &LlamaConfig,
        weights: &Weights,
        device: &Device,
        dense: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let family = cfg.family()?;
        let shape = ModelShape {
            vocab: cfg.vocab_size,
            hidden: cfg.hidden_size,
            layers: cfg.num_hidden_layers,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            head_dim: cfg.head_size(),
            ff: Some(cfg.intermediate_size),
            rms_eps: cfg.rms_norm_eps,
            context: cfg.max_position_embeddings,
            arch: cfg.traits()?,
        };
        let divisors = cfg.rope_divisors()?;
        let mut tensor = |gguf: &str| -> Result<Option<QTensor>> {
            if gguf == "rope_freqs.weight" {
                let Some(d) = &divisors else {
                    return Ok(None);
                };
                let t = Tensor::new(d.as_slice(), device)?;
                return Ok(Some(QTensor::quantize(&t, GgmlDType::F32)?));
            }
            let Some(w) = hf_name(family, gguf).and_then(|name| weights.get(&name)) else {
                return Ok(None);
            };
            let w = w.to_dtype(DType::F32)?;
            let permutes = family.gguf_permutes_qk();
            let w = if permutes && gguf.ends_with("attn_q.weight") {
                permute_for_gguf(&w, cfg.num_attention_heads)?
            } else if permutes && gguf.ends_with("attn_k.weight") {
                permute_for_gguf(&w, cfg.kv_heads())?
            } else if gguf.ends_with("norm.weight") && cfg.norm_offset() != 0.0 {
                (w + cfg.norm_offset())?
            } else {
                w
            };
            quantize(&w.to_device(device)?).map(Some)
        };
        Self::from_tensors(shape, cfg.tie_word_embeddings, &mut tensor, device, dense)
    }
}

/// Q8_0 for matrices whose rows split into whole blocks, f32 otherwise (norm vectors too).
fn quantize(w: &Tensor) -> Result<QTensor> {
    let q8 = w.rank() == 2 && w.dims()[1].is_multiple_of(Q8_BLOCK);
    let dtype = if q8 { GgmlDType::Q8_0 } else { GgmlDType::F32 };
    Ok(QTensor::quantize(w, dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_files::weights::init_random;
    use crate::train::{model_from_weights, CausalLm};

    /// The folder model's next-token logits match the training model's (f32 weights,
    /// `Llama::forward`) on the same tokens: renaming and the q/k permutation are right.
    #[test]
    fn matches_the_training_model() -> Result<()> {
        let mut cfg = LlamaConfig::new(40, 16, 32, 2, 4, 2);
        cfg.tie_word_embeddings = true;
        let weights = init_random(&cfg, 0.2, 7, DType::F32, &Device::Cpu)?;
        let ids = [1u32, 5, 9, 2, 30, 7];
        let reference = model_from_weights(&cfg, &weights)?;
        let input = Tensor::new(&ids[..], &Device::Cpu)?.unsqueeze(0)?;
        let want: Vec<f32> = reference
            .forward(&input, None)?
            .squeeze(0)?
            .get(ids.len() - 1)?
            .to_vec1()?;
        let model = GgufModel::from_hf_weights(&cfg, &weights, &Device::Cpu, false)?;
        let mut cache = model.new_cache();
        let got = super::super::gguf_model::last_row(&model.forward(&ids, &mut cache, false)?)?;
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Weights are stored as Q8_0 and single rows run through the quantized kernel (Q8_1
        // activations), so logits differ from the f32 training model by quantization noise:
        // measured 0.041 on this model; the bound leaves room but catches a wrong mapping or
        // permutation (which moves logits by whole units).
        assert!(worst < 0.15, "largest logit difference {worst}");
        Ok(())
    }

    /// Caches cloned from a shared prefix, cut back and extended give exactly the logits of
    /// caches computed from scratch, and never write into each other's buffers.
    #[test]
    fn shared_and_truncated_caches_stay_exact() -> Result<()> {
        let cfg = LlamaConfig::new(40, 16, 32, 2, 4, 2);
        let weights = init_random(&cfg, 0.2, 7, DType::F32, &Device::Cpu)?;
        let model = GgufModel::from_hf_weights(&cfg, &weights, &Device::Cpu, false)?;
        let fresh = |ids: &[u32]| -> Result<Tensor> {
            let mut c = model.new_cache();
            model.forward(&ids[..4], &mut c, false)?;
            model.forward(&ids[4..], &mut c, true)
        };
        let same = |a: &Tensor, b: &Tensor| -> Result<bool> {
            Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? == 0.0)
        };
        let prefix = [1u32, 5, 9, 2];
        let mut a = model.new_cache();
        model.forward(&prefix, &mut a, false)?;
        let mut b = a.clone();
        // Both sharers extend the same positions with different tokens.
        let ya = model.forward(&[30, 7, 11], &mut a, true)?;
        let yb = model.forward(&[3, 4], &mut b, true)?;
        assert!(
            !a.shares_buffers_with(&b),
            "extending must copy shared buffers"
        );
        assert!(same(&ya, &fresh(&[1, 5, 9, 2, 30, 7, 11])?)?);
        assert!(same(&yb, &fresh(&[1, 5, 9, 2, 3, 4])?)?);
        // A cache cut back to the prefix overwrites its own stale positions.
        a.truncate(prefix.len())?;
        let yc = model.forward(&[8, 8], &mut a, true)?;
        assert!(same(&yc, &fresh(&[1, 5, 9, 2, 8, 8])?)?);
        // Growing past the first buffer keeps every earlier position.
        let long: Vec<u32> = (0..300).map(|i| (i * 7 % 40) as u32).collect();
        let mut g = model.new_cache();
        model.forward(&long[..4], &mut g, false)?;
        let mut last = None;
        for &t in &long[4..] {
            last = Some(model.forward(&[t], &mut g, true)?);
        }
        let mut whole = model.new_cache();
        model.forward(&long[..4], &mut whole, false)?;
        let want = model.forward(&long[4..], &mut whole, true)?;
        let got = last.expect("tokens");
        let diff = (got - want.get(want.dim(0)? - 1)?.unsqueeze(0)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "token-by-token vs chunk after growth: {diff}");
        Ok(())
    }
}
