//! The trainable model of every supported family on tiny random weights: gradients against
//! finite differences, cached decoding against the full pass, the inference engine's logits
//! against the trainable model's, and save/load round trips. Each config turns on what its
//! family adds (biases, q/k norms, Gemma's norms and local layers, fused projections, Llama 3
//! rope scaling, soft-capping), with sequences longer than the sliding windows.

use super::model::CausalLm;
use super::params::{ParamStore, Trainable};
use super::tests::{check_finite_differences, dataset_batch, ids, lora_rank2, max_diff, VOCAB};
use super::{load_model_dir, model_from_weights, save_model_dir};
use crate::llm::local::GgufModel;
use crate::model_files::config::{Family, LlamaConfig};
use crate::model_files::lora::{self, LoraConfig};
use crate::model_files::weights::{init_random, Weights};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A tiny model of `family` with every switch of the family on. No matrix has rows of a
/// multiple of 32 values, so the engine keeps every weight in f32 (no Q8_0 noise).
fn family_config(family: Family) -> LlamaConfig {
    let mut cfg = LlamaConfig::for_family(family, [VOCAB, 16, 24, 3, 4, 2]);
    cfg.max_position_embeddings = 64;
    cfg.rope_theta = 1_000.0;
    match family {
        Family::Llama => {
            cfg.rope_scaling = Some(serde_json::json!({"rope_type": "llama3", "factor": 4.0,
                "low_freq_factor": 1.0, "high_freq_factor": 2.0,
                "original_max_position_embeddings": 16}));
            cfg.final_logit_softcapping = Some(3.0);
        }
        Family::Mistral => cfg.sliding_window = Some(3),
        Family::Gemma3 => {
            cfg.head_dim = Some(6);
            cfg.sliding_window = Some(3);
            cfg.sliding_window_pattern = Some(2);
            cfg.query_pre_attn_scalar = Some(6.0);
            cfg.rope_local_base_freq = Some(50.0);
        }
        Family::Qwen2 | Family::Qwen3 | Family::Phi3 => {}
    }
    cfg.validate().unwrap();
    cfg
}

/// Random weights; vectors (norms, biases) random too, so that each one matters.
fn family_weights(cfg: &LlamaConfig, dtype: DType, seed: u64) -> Weights {
    let mut weights = init_random(cfg, 0.3, seed, dtype, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut names: Vec<String> = weights.keys().cloned().collect();
    names.sort();
    for name in names {
        let w = weights.get_mut(&name).expect("listed");
        if w.rank() == 1 {
            let base = if name.ends_with("bias") {
                0.0
            } else {
                1.0 - cfg.norm_offset()
            };
            let v: Vec<f64> = (0..w.elem_count())
                .map(|_| base + rng.random_range(-0.3..0.3))
                .collect();
            *w = Tensor::from_vec(v, w.dims(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
        }
    }
    weights
}

const FAMILIES: [Family; 6] = [
    Family::Llama,
    Family::Mistral,
    Family::Qwen2,
    Family::Qwen3,
    Family::Gemma3,
    Family::Phi3,
];

const TOKENS: [u32; 9] = [1, 5, 9, 3, 22, 40, 7, 12, 30];

/// The inference engine built from the same weights (f32: rows of 16 values stay unquantized)
/// gives the trainable model's logits at every position: names, q/k permutation, Gemma's
/// `1 + w`, fused parts, biases, windows and rope bases all agree.
#[test]
fn engine_matches_the_trainable_model_for_every_family() -> Result<()> {
    for family in FAMILIES {
        let cfg = family_config(family);
        let weights = family_weights(&cfg, DType::F32, 11);
        let want = model_from_weights(&cfg, &weights)?
            .forward(&ids(&TOKENS), None)?
            .squeeze(0)?;
        let engine = GgufModel::from_hf_weights(&cfg, &weights, &Device::Cpu, false)?;
        let got = engine.forward(&TOKENS, &mut engine.new_cache(), true)?;
        let d = max_diff(&want, &got);
        assert!(d < 1e-4, "{family:?}: engine differs by {d}");
    }
    Ok(())
}

#[test]
fn cached_decoding_equals_the_full_pass_for_every_family() -> Result<()> {
    for family in FAMILIES {
        let cfg = family_config(family);
        let model = model_from_weights(&cfg, &family_weights(&cfg, DType::F32, 3))?;
        let tokens = ids(&TOKENS);
        let full = model.forward(&tokens, None)?;
        let mut cache = model.new_cache();
        let mut parts = vec![model.forward_cached(&tokens.narrow(1, 0, 2)?, &mut cache)?];
        for p in 2..TOKENS.len() {
            parts.push(model.forward_cached(&tokens.narrow(1, p, 1)?, &mut cache)?);
        }
        let d = max_diff(&full, &Tensor::cat(&parts, 1)?);
        assert!(d < 1e-5, "{family:?}: cached differs by {d}");
    }
    Ok(())
}

/// Central finite differences in f64 against autograd for the tensors each family adds, in
/// full fine-tuning and with LoRA on every linear layer of the family.
#[test]
fn gradients_match_finite_differences_for_every_family() -> Result<()> {
    let batch = dataset_batch(2, 5)?;
    for family in FAMILIES {
        let cfg = family_config(family);
        let lora_cfg = lora_rank2();
        for mode in [Trainable::All, Trainable::Lora(lora_cfg.clone())] {
            let mut weights = family_weights(&cfg, DType::F64, 5);
            if mode.lora().is_some() {
                let adapters = lora::init_adapters(&cfg, &lora_cfg, 1, DType::F64, &Device::Cpu)?;
                weights.extend(adapters);
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
                let wanted = name.contains("layers.0.") || name.contains("layers.1.");
                let interesting = [
                    "norm",
                    "bias",
                    "qkv_proj",
                    "gate_up_proj",
                    "q_proj",
                    "lora_A",
                ];
                if !wanted || !interesting.iter().any(|k| name.contains(k)) {
                    continue;
                }
                let grad = grads
                    .get(var.as_tensor())
                    .unwrap()
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                let n = var.as_tensor().elem_count();
                let what = format!("{family:?} {mode:?} {name}");
                checked += check_finite_differences(var, &grad, &[0, n - 1], 1e-7, &what, || {
                    Ok(loss(&model)?.to_scalar::<f64>()?)
                })?;
            }
            assert!(checked >= 4, "{family:?}: only {checked} entries checked");
        }
    }
    Ok(())
}

/// A saved folder names the family's class, reads back equal, and builds the same model.
#[test]
fn saved_folders_keep_the_family() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for family in FAMILIES {
        let cfg = family_config(family);
        let weights = family_weights(&cfg, DType::F32, 2);
        let path = dir.path().join(family.model_type());
        save_model_dir(&path, &cfg, &weights, &[])?;
        let text = std::fs::read_to_string(path.join("config.json"))?;
        assert!(text.contains(family.class_name()), "{text}");
        let (cfg2, weights2) = load_model_dir(&path, DType::F32, &Device::Cpu)?;
        assert_eq!(cfg, cfg2);
        let a = model_from_weights(&cfg, &weights)?.forward(&ids(&TOKENS), None)?;
        let b = model_from_weights(&cfg2, &weights2)?.forward(&ids(&TOKENS), None)?;
        assert_eq!(max_diff(&a, &b), 0.0, "{family:?}");
    }
    Ok(())
}

/// LoRA targets are the family's own modules: Phi-3 has `qkv_proj`, not `q_proj`.
#[test]
fn lora_targets_follow_the_family() {
    let phi3 = family_config(Family::Phi3);
    let lora = |t: &str| LoraConfig {
        targets: vec![t.to_string()],
        ..LoraConfig::default()
    };
    let names = |l: LoraConfig| -> Vec<&str> {
        let kinds = l.target_kinds(&phi3).unwrap();
        kinds.into_iter().map(|k| k.name()).collect()
    };
    assert_eq!(
        names(lora("all")),
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    );
    let err = lora("q_proj").target_kinds(&phi3).unwrap_err().to_string();
    assert!(err.contains("qkv_proj") && err.contains("phi3"), "{err}");
}

/// With activation checkpointing the loss and every parameter's gradient are those of the
/// plain model (up to summation order), in full fine-tuning and with LoRA on frozen weights.
#[test]
fn checkpointing_gives_the_same_gradients() -> Result<()> {
    let batch = dataset_batch(3, 9)?;
    let cfg = family_config(Family::Gemma3);
    let lora_cfg = lora_rank2();
    for mode in [Trainable::All, Trainable::Lora(lora_cfg.clone())] {
        let mut weights = family_weights(&cfg, DType::F64, 4);
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
        let plain = store.build_model()?;
        let ckpt = store.build_model()?.with_checkpointing();
        let (la, lb) = (batch.nll_sum(&plain)?, batch.nll_sum(&ckpt)?);
        assert_eq!(la.to_scalar::<f64>()?, lb.to_scalar::<f64>()?);
        let (ga, gb) = (plain.backward(&la)?, ckpt.backward(&lb)?);
        let mut compared = 0;
        for (name, var) in store.vars() {
            let a = ga.get(var.as_tensor());
            let b = gb.get(var.as_tensor());
            let (Some(a), Some(b)) = (a, b) else {
                panic!("{mode:?} {name}: gradient only on one side");
            };
            let d = max_diff(a, b);
            assert!(d < 1e-10, "{mode:?} {name}: gradients differ by {d}");
            compared += 1;
        }
        assert!(compared > 4, "{mode:?}: {compared} compared");
    }
    Ok(())
}

/// Relative L2 distance `|a − b| / |b|`.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let norm = |t: &Tensor| -> f64 {
        let t = t.to_dtype(DType::F64).unwrap();
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .sqrt()
    };
    norm(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap()) / norm(b)
}

/// Mixed precision: for every family, in full fine-tuning and LoRA, a model computing in a
/// narrower dtype than its master weights has hidden states in that dtype, a loss in f32 or
/// wider and master gradients in the masters' dtype, both close to the masters-only pass's;
/// and optimizer updates of the masters reach it (trainable weights are cast where used, not
/// once), so its losses follow the masters-only run's step by step. f64 masters computing in f32 pin the mechanism
/// (casts and gradient paths) to rounding; f32 masters computing in f16 pin the half path
/// (norms and softmaxes in f32). bf16, which candle's CPU matrix product lacks, runs the f16
/// code on a GPU.
#[test]
fn narrower_compute_follows_the_master_precision_for_every_family() -> Result<()> {
    // (masters, compute, largest relative gradient error, largest relative loss error); the
    // f16 bounds are about twice the largest errors measured (4.1e-2 and 5.0e-3).
    for (master, compute, grad_tol, loss_tol) in [
        (DType::F64, DType::F32, 1e-4, 1e-6),
        (DType::F32, DType::F16, 8e-2, 1e-2),
    ] {
        follow_master_precision(master, compute, grad_tol, loss_tol)?;
    }
    Ok(())
}

fn follow_master_precision(
    master: DType,
    compute: DType,
    grad_tol: f64,
    loss_tol: f64,
) -> Result<()> {
    use super::optim::{AdamW, AdamWParams, Gradients};
    let batch = dataset_batch(4, 9)?;
    let lora_cfg = lora_rank2();
    let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    for family in FAMILIES {
        let cfg = family_config(family);
        for mode in [Trainable::All, Trainable::Lora(lora_cfg.clone())] {
            let what = format!(
                "{family:?} {} in {compute:?}",
                if mode.lora().is_some() { "lora" } else { "all" }
            );
            let mut weights = family_weights(&cfg, master, 6);
            if mode.lora().is_some() {
                let adapters = lora::init_adapters(&cfg, &lora_cfg, 1, master, &Device::Cpu)?;
                weights.extend(adapters);
            }
            // Two stores with the same starting values (LoRA's B random, so that every
            // adapter has a gradient), one per model.
            let stores = [
                ParamStore::new(&cfg, weights.clone(), mode.clone())?,
                ParamStore::new(&cfg, weights, mode.clone())?,
            ];
            for store in &stores {
                for (name, var) in store.vars() {
                    if name.contains("lora_B") {
                        let mut rng = ChaCha8Rng::seed_from_u64(name.len() as u64);
                        let v: Vec<f64> = (0..var.elem_count())
                            .map(|_| rng.random_range(-0.3..0.3))
                            .collect();
                        let t = Tensor::from_vec(v, var.shape(), &Device::Cpu)?;
                        var.set(&t.to_dtype(master)?)?;
                    }
                }
            }
            let plain = stores[0].build_model()?.with_checkpointing();
            let narrow = stores[1]
                .build_model()?
                .with_compute_dtype(compute)?
                .with_checkpointing();
            let hidden = narrow.forward_hidden(&batch.input_ids, Some(&batch.attention_mask))?;
            assert_eq!(hidden.dtype(), compute, "{what}");
            let mut opts = [
                AdamW::new(AdamWParams::default()),
                AdamW::new(AdamWParams::default()),
            ];
            let mut losses = [Vec::new(), Vec::new()];
            for step in 0..4 {
                let mut grads = Vec::new();
                for (i, model) in [&plain, &narrow].into_iter().enumerate() {
                    let loss = (batch.nll_sum(model)? / batch.num_targets as f64)?;
                    let wide = super::ops::wide_dtype(model.dtype());
                    assert_eq!(loss.dtype(), wide, "{what}");
                    losses[i].push(scalar(&loss)?);
                    let mut g = Gradients::new();
                    g.accumulate(stores[i].vars(), model.backward(&loss)?)?;
                    grads.push(g);
                }
                if step == 0 {
                    for (name, _) in stores[0].vars() {
                        let (Some(a), Some(b)) = (grads[1].get(name), grads[0].get(name)) else {
                            panic!("{what} {name}: a gradient is missing");
                        };
                        assert_eq!(a.dtype(), master, "{what} {name}");
                        let e = relative_error(a, b);
                        assert!(e < grad_tol, "{what} {name}: gradient off by {e:.2e}");
                    }
                }
                for (i, opt) in opts.iter_mut().enumerate() {
                    opt.step(stores[i].vars(), &grads[i], 1e-2)?;
                }
            }
            let [a, b] = &losses;
            assert!(a[3] < a[0] - 0.05, "{what}: the plain run learns: {a:?}");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() < loss_tol * x,
                    "{what}: losses {a:?} vs {b:?}"
                );
            }
        }
    }
    Ok(())
}
