//! Tests of the model, LoRA and checkpoints on tiny random-weight models, and the
//! helpers shared with the training-loop tests.

use super::data::{Batch, TokenizedExample};
use super::model::CausalLm;
use super::optim::ScheduleKind;
use super::params::{ParamStore, Trainable};
use super::sft::SftConfig;
use super::trainer::SftTrainer;
use super::{model_from_weights, LlamaConfig};
use crate::model_files::checkpoint::max_weight_difference;
use crate::model_files::lora::{self, LoraConfig};
use crate::model_files::weights::{init_random, Weights};
use anyhow::Result;
use candle_core::{DType, Device, IndexOp, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(super) const VOCAB: usize = 64;

pub(super) fn tiny_config(tied: bool) -> LlamaConfig {
    let mut cfg = LlamaConfig::new(VOCAB, 32, 64, 2, 4, 2);
    cfg.tie_word_embeddings = tied;
    cfg.max_position_embeddings = 64;
    cfg
}

pub(super) fn tiny_weights(cfg: &LlamaConfig, dtype: DType) -> Weights {
    init_random(cfg, 0.1, 7, dtype, &Device::Cpu).unwrap()
}

/// `n` examples: a 3-token prompt and a 4-token response that depends on the prompt.
pub(super) fn dataset(n: usize, seed: u64) -> Vec<TokenizedExample> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let a: u32 = rng.random_range(3..VOCAB as u32);
            let b: u32 = rng.random_range(3..VOCAB as u32);
            let extra = rng.random_range(0..3usize);
            let mut tokens = vec![1, a, b];
            tokens.extend((0..4 + extra).map(|i| (a * 7 + b * 3 + i as u32) % VOCAB as u32));
            let loss_mask = (0..tokens.len()).map(|i| i >= 3).collect();
            TokenizedExample { tokens, loss_mask }
        })
        .collect()
}

pub(super) fn quick_config(trainable: Trainable) -> SftConfig {
    SftConfig {
        lr: 1e-2,
        warmup_steps: 0,
        schedule: ScheduleKind::Constant,
        max_steps: Some(3),
        batch_size: 4,
        grad_accum: 1,
        eval_every: 0,
        save_every: 0,
        trainable,
        ..SftConfig::default()
    }
}

pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

pub(super) fn ids(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Compares `grad` (autograd's gradient of `loss` for `var`) at the entries `at` with central
/// finite differences of `loss`, within `abs_tol + 1e-4 · |gradient|`; `var` is restored.
/// Returns the number of entries checked.
pub(super) fn check_finite_differences(
    var: &Var,
    grad: &[f64],
    at: &[usize],
    abs_tol: f64,
    what: &str,
    loss: impl Fn() -> Result<f64>,
) -> Result<usize> {
    let orig = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
    let eps = 1e-5;
    for &idx in at {
        let eval_at = |delta: f64| -> Result<f64> {
            let mut v = orig.clone();
            v[idx] += delta;
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
            loss()
        };
        let numeric = (eval_at(eps)? - eval_at(-eps)?) / (2.0 * eps);
        eval_at(0.0)?;
        let analytic = grad[idx];
        let tol = abs_tol + 1e-4 * analytic.abs().max(numeric.abs());
        assert!(
            (numeric - analytic).abs() < tol,
            "{what}[{idx}]: fd {numeric} vs autograd {analytic}"
        );
    }
    Ok(at.len())
}

/// Rank-2 LoRA on every projection (the finite-difference and precision tests).
pub(super) fn lora_rank2() -> LoraConfig {
    LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["all".to_string()],
    }
}

/// [`dataset`]`(n, seed)` as one padded batch.
pub(super) fn dataset_batch(n: usize, seed: u64) -> Result<Batch> {
    let data = dataset(n, seed);
    let refs: Vec<&TokenizedExample> = data.iter().collect();
    Batch::new(&refs, &Device::Cpu)
}

pub(super) fn lora_all() -> Trainable {
    Trainable::Lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec!["all".to_string()],
    })
}

#[test]
fn prompt_positions_get_no_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let data = dataset(3, 3);
    let refs: Vec<&TokenizedExample> = data.iter().collect();
    let batch = Batch::new(&refs, &dev)?;
    let (b, t) = batch.input_ids.dims2()?;
    let logits = Var::randn(0f32, 1.0, (b, t, VOCAB), &dev)?;
    let grads = batch.nll_sum_from_logits(logits.as_tensor())?.backward()?;
    let g = grads.get(logits.as_tensor()).unwrap();
    for (row, ex) in data.iter().enumerate() {
        for p in 0..t {
            let counted = p + 1 < ex.tokens.len() && ex.loss_mask[p + 1];
            let norm = g.i((row, p))?.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert_eq!(norm > 0.0, counted, "row {row} position {p}");
        }
    }
    // The training path (hidden-state selection) computes the same loss as full logits.
    let cfg = tiny_config(true);
    let model = model_from_weights(&cfg, &tiny_weights(&cfg, DType::F32))?;
    let full = model.forward(&batch.input_ids, Some(&batch.attention_mask))?;
    let a = batch.nll_sum_from_logits(&full)?.to_scalar::<f32>()?;
    let b2 = batch.nll_sum(&model)?.to_scalar::<f32>()?;
    assert!((a - b2).abs() < 1e-4 * a.abs(), "{a} vs {b2}");
    Ok(())
}

#[test]
fn cached_generation_equals_full_forward() -> Result<()> {
    for tied in [true, false] {
        let cfg = tiny_config(tied);
        let model = model_from_weights(&cfg, &tiny_weights(&cfg, DType::F32))?;
        let tokens = Tensor::new(
            &[[1u32, 5, 9, 3, 22, 40, 7], [1, 8, 8, 2, 60, 33, 4]],
            &Device::Cpu,
        )?;
        let full = model.forward(&tokens, None)?;
        let mut cache = model.new_cache();
        let mut parts = vec![model.forward_cached(&tokens.narrow(1, 0, 4)?, &mut cache)?];
        for p in 4..7 {
            parts.push(model.forward_cached(&tokens.narrow(1, p, 1)?, &mut cache)?);
        }
        assert_eq!(cache.len(), 7);
        let cached = Tensor::cat(&parts, 1)?;
        assert!(
            max_diff(&full, &cached) < 1e-5,
            "diff {}",
            max_diff(&full, &cached)
        );
    }
    Ok(())
}

#[test]
fn right_padding_does_not_change_real_positions() -> Result<()> {
    let cfg = tiny_config(true);
    let model = model_from_weights(&cfg, &tiny_weights(&cfg, DType::F32))?;
    let data = dataset(2, 4);
    let (short, long) = if data[0].tokens.len() <= data[1].tokens.len() {
        (&data[0], &data[1])
    } else {
        (&data[1], &data[0])
    };
    let long = TokenizedExample {
        tokens: long.tokens.iter().chain(&[5, 6]).copied().collect(),
        loss_mask: long
            .loss_mask
            .iter()
            .chain(&[true, true])
            .copied()
            .collect(),
    };
    let batch = Batch::new(&[short, &long], &Device::Cpu)?;
    let padded = model.forward(&batch.input_ids, Some(&batch.attention_mask))?;
    let alone = model.forward(&ids(&short.tokens), None)?;
    let n = short.tokens.len();
    assert!(max_diff(&padded.i((0..1, 0..n))?, &alone) < 1e-5);
    Ok(())
}

#[test]
fn lora_starts_equal_to_base_and_merges_exactly() -> Result<()> {
    let cfg = tiny_config(true);
    let base = tiny_weights(&cfg, DType::F32);
    let lora_cfg = LoraConfig::default();
    let tokens = ids(&[1, 4, 9, 16, 25, 36]);
    let base_logits = model_from_weights(&cfg, &base)?.forward(&tokens, None)?;

    let mut weights = base.clone();
    weights.extend(lora::init_adapters(
        &cfg,
        &lora_cfg,
        3,
        DType::F32,
        &Device::Cpu,
    )?);
    let store = ParamStore::new(&cfg, weights, Trainable::Lora(lora_cfg.clone()))?;
    let lora_logits = store.build_model()?.forward(&tokens, None)?;
    assert_eq!(max_diff(&base_logits, &lora_logits), 0.0);

    // Give B random values so the adapters matter, then compare with the merged model.
    for (name, var) in store.vars() {
        if name.contains("lora_B") {
            var.set(&Tensor::randn(0f32, 0.2, var.shape(), &Device::Cpu)?)?;
        }
    }
    let adapted = store.build_model()?.forward(&tokens, None)?;
    assert!(max_diff(&adapted, &base_logits) > 1e-3);
    let merged = lora::merge_adapters(&store.base_weights(), &store.adapter_weights(), &lora_cfg)?;
    let merged_logits = model_from_weights(&cfg, &merged)?.forward(&tokens, None)?;
    assert!(max_diff(&adapted, &merged_logits) < 1e-5);
    Ok(())
}

/// Central finite differences of the mean loss in f64 against autograd, for a few
/// entries of several parameters, in full and LoRA mode (which uses the frozen-weight
/// gradient op).
#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let cfg = tiny_config(true);
    let batch = dataset_batch(2, 5)?;
    let lora_cfg = lora_rank2();
    for mode in [Trainable::All, Trainable::Lora(lora_cfg.clone())] {
        let mut weights = tiny_weights(&cfg, DType::F64);
        if mode.lora().is_some() {
            weights.extend(lora::init_adapters(
                &cfg,
                &lora_cfg,
                1,
                DType::F64,
                &Device::Cpu,
            )?);
        }
        let store = ParamStore::new(&cfg, weights, mode.clone())?;
        for (name, var) in store.vars() {
            if name.contains("lora_B") {
                var.set(&Tensor::randn(0f64, 0.3, var.shape(), &Device::Cpu)?)?;
            }
        }
        let model = store.build_model()?;
        let loss = |m: &super::Llama| -> Result<Tensor> {
            Ok((batch.nll_sum(m)? / batch.num_targets as f64)?)
        };
        let grads = model.backward(&loss(&model)?)?;
        let mut checked = 0;
        for (name, var) in store.vars() {
            let checked_here = [
                "model.embed_tokens.weight",
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.1.self_attn.k_proj.weight",
                "model.layers.0.self_attn.o_proj.weight",
                "model.layers.1.mlp.down_proj.weight",
                "model.layers.0.input_layernorm.weight",
                "model.norm.weight",
                "model.layers.0.self_attn.q_proj.lora_A.weight",
                "model.layers.1.mlp.up_proj.lora_B.weight",
            ];
            if !checked_here.contains(&name.as_str()) {
                continue;
            }
            let grad = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()?
                .to_vec1::<f64>()?;
            let orig_len = var.as_tensor().elem_count();
            let at = [0, orig_len / 2 + 1, orig_len - 1];
            let what = format!("{mode:?} {name}");
            checked += check_finite_differences(var, &grad, &at, 1e-6, &what, || {
                Ok(loss(&model)?.to_scalar::<f64>()?)
            })?;
        }
        assert!(checked >= 6, "only {checked} entries checked");
    }
    Ok(())
}

#[test]
fn save_and_load_give_identical_logits() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let extra = [("tokenizer.json", b"{}".to_vec())];
    super::save_model_dir(&dir.path().join("m"), &cfg, &weights, &extra)?;
    assert!(dir.path().join("m/tokenizer.json").exists());
    let (cfg2, weights2) = super::load_model_dir(&dir.path().join("m"), DType::F32, &Device::Cpu)?;
    assert_eq!(cfg, cfg2);
    let tokens = ids(&[1, 2, 3, 4, 5]);
    let a = model_from_weights(&cfg, &weights)?.forward(&tokens, None)?;
    let b = model_from_weights(&cfg2, &weights2)?.forward(&tokens, None)?;
    assert_eq!(max_diff(&a, &b), 0.0);

    // A LoRA checkpoint loads merged, and merge_checkpoint writes the same model.
    let mut trainer =
        SftTrainer::new(&cfg, weights, &dataset(8, 7), &[], quick_config(lora_all()))?;
    trainer.train_step()?;
    trainer.train_step()?;
    let ckpt = dir.path().join("checkpoint-2");
    trainer.save_checkpoint(&ckpt, &extra)?;
    let trained = trainer.model().forward(&tokens, None)?;
    let (_, merged) = super::load_model_dir(&ckpt, DType::F32, &Device::Cpu)?;
    assert!(
        max_diff(
            &trained,
            &model_from_weights(&cfg, &merged)?.forward(&tokens, None)?
        ) < 1e-5
    );
    super::merge_checkpoint(&ckpt, &dir.path().join("merged"))?;
    assert!(!dir.path().join("merged/adapter.safetensors").exists());
    assert!(dir.path().join("merged/tokenizer.json").exists());
    let (_, merged2) = super::load_model_dir(&dir.path().join("merged"), DType::F32, &Device::Cpu)?;
    assert_eq!(max_weight_difference(&merged, &merged2)?, 0.0);
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
    let (cos, sin) = super::ops::rope_tables(d, t, (10_000.0, 1.0), None, DType::F32, &dev)?;
    let heads_of = |w: &Tensor| -> Result<Tensor> {
        let q = x.matmul(&w.t()?)?;
        Ok(q.reshape((1, t, heads, d))?.transpose(1, 2)?.contiguous()?)
    };
    let scores =
        |q: Tensor| -> Result<Vec<f32>> { Ok(q.matmul(&q.t()?)?.flatten_all()?.to_vec1()?) };
    let hf = candle_nn::rotary_emb::rope(&heads_of(&w)?, &cos, &sin)?;
    let gguf = candle_nn::rotary_emb::rope_i(
        &heads_of(&crate::model_files::weights::permute_for_gguf(&w, heads)?)?,
        &cos,
        &sin,
    )?;
    for (a, b) in scores(hf)?.iter().zip(scores(gguf)?) {
        assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
    }
    Ok(())
}
