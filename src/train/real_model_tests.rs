//! Manual checks on a real model (SmolLM2-135M-Instruct as a llama.cpp GGUF file).
//!
//! Ignored by default; each skips with a note when the file is absent. Run one at a
//! time so that the peak-memory figure belongs to that test:
//! `cargo test --lib real_ -- --ignored --nocapture --test-threads 1`.
//! Set `CAI_TEST_GGUF` to use another llama GGUF file.

use super::data::{Batch, TokenizedExample};
use super::model::{argmax_last, CausalLm};
use super::params::Trainable;
use super::sft::SftConfig;
use super::trainer::SftTrainer;
use super::{model_from_weights, ScheduleKind};
use crate::model_files::lora::LoraConfig;
use crate::model_files::weights::load_gguf;
use anyhow::Result;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::time::Instant;

/// A chat prompt as SmolLM2 tokenizer pieces (space-separated), looked up in the GGUF
/// vocabulary; the greedy answer should mention Paris.
const PROMPT_PIECES: &str = "<|im_start|> system Ċ You Ġare Ġa Ġhelpful ĠAI Ġassistant Ġnamed \
    ĠSm ol LM , Ġtrained Ġby ĠHug ging ĠFace <|im_end|> Ċ <|im_start|> user Ċ What Ġis Ġthe \
    Ġcapital Ġof ĠFrance ? <|im_end|> Ċ <|im_start|> ass istant Ċ";

fn gguf_path() -> Option<PathBuf> {
    crate::test_support::test_gguf()
}

/// The token strings stored in the GGUF file, for printing predictions.
fn vocabulary(path: &PathBuf) -> Result<Vec<String>> {
    let mut file = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut file)?;
    let tokens = content
        .metadata
        .get("tokenizer.ggml.tokens")
        .map(|v| v.to_vec())
        .transpose()?
        .map(|list| {
            list.iter()
                .map(|t| t.to_string().cloned().unwrap_or_default())
                .collect()
        });
    Ok(tokens.unwrap_or_default())
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[test]
#[ignore = "needs the SmolLM2 GGUF file; run manually"]
fn real_gguf_predicts_plausibly_and_cache_matches() -> Result<()> {
    let Some(path) = gguf_path() else {
        return Ok(());
    };
    let started = Instant::now();
    let (cfg, weights) = load_gguf(&path, DType::F32, &Device::Cpu)?;
    println!("loaded {cfg:?} in {:.1?}", started.elapsed());
    let vocab = vocabulary(&path)?;
    let show = |id: u32| vocab.get(id as usize).cloned().unwrap_or_default();
    let prompt: Vec<u32> = PROMPT_PIECES
        .split_whitespace()
        .map(|piece| {
            let id = vocab.iter().position(|v| v == piece);
            id.map(|i| i as u32)
                .ok_or_else(|| anyhow::anyhow!("piece {piece:?} not in the vocabulary"))
        })
        .collect::<Result<_>>()?;
    println!("prompt ids: {prompt:?}");
    let model = model_from_weights(&cfg, &weights)?;
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&ids, None)?;

    let values = logits.flatten_all()?.to_vec1::<f32>()?;
    assert!(values.iter().all(|v| v.is_finite()), "non-finite logits");
    let next = argmax_last(&logits)?;
    println!("greedy next token: {next} {:?}", show(next));

    // Mean next-token loss on the prompt itself. An independent NumPy implementation of
    // llama.cpp's forward pass (interleaved RoPE on the raw, permuted GGUF weights) gives
    // 4.4172 on the default file; the loss alone barely detects a wrong q/k permutation
    // (4.458), but the greedy answer below does.
    let example = TokenizedExample {
        tokens: prompt.clone(),
        loss_mask: vec![true; prompt.len()],
    };
    let batch = Batch::new(&[&example], &Device::Cpu)?;
    let loss = batch.nll_sum(&model)?.to_scalar::<f32>()? / batch.num_targets as f32;
    println!("mean next-token loss on the prompt: {loss:.3}");
    let log_probs = super::ops::log_softmax_last_dim(&logits.squeeze(0)?)?;
    let per_token: Vec<String> = (1..prompt.len())
        .map(|p| {
            let lp = log_probs
                .get(p - 1)?
                .get(prompt[p] as usize)?
                .to_scalar::<f32>()?;
            Ok(format!("{}:{:.1}", show(prompt[p]), -lp))
        })
        .collect::<Result<_>>()?;
    println!("per-token loss: {}", per_token.join(" "));
    assert!(loss < 5.0, "loss {loss} is implausibly high");
    if std::env::var_os("CAI_TEST_GGUF").is_none() {
        assert!(
            (loss - 4.4172).abs() < 0.01,
            "loss {loss} differs from the reference"
        );
    }

    // Greedy continuation with the cache must equal the full forward pass.
    let mut cache = model.new_cache();
    let mut tokens = prompt.clone();
    let mut step_logits = model.forward_cached(&ids, &mut cache)?;
    for _ in 0..8 {
        let next = argmax_last(&step_logits)?;
        tokens.push(next);
        step_logits = model.forward_cached(&Tensor::new(&[[next]], &Device::Cpu)?, &mut cache)?;
    }
    let continuation: String = tokens[prompt.len()..].iter().map(|&t| show(t)).collect();
    println!("greedy continuation: {continuation:?}");
    assert!(continuation.contains("Paris"), "{continuation:?}");
    let all = Tensor::new(tokens.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let full_last = model.forward(&all, None)?.narrow(1, tokens.len() - 1, 1)?;
    let diff = (full_last - &step_logits)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    println!("max |cached - full| on the last position: {diff:e}");
    assert!(diff < 1e-3);
    Ok(())
}

fn speed(trainable: Trainable) -> Result<()> {
    let Some(path) = gguf_path() else {
        return Ok(());
    };
    let (cfg, weights) = load_gguf(&path, DType::F32, &Device::Cpu)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (batch, len, steps) = (4, 128, 3);
    let data: Vec<TokenizedExample> = (0..batch * (steps + 1))
        .map(|_| TokenizedExample {
            tokens: (0..len)
                .map(|_| rng.random_range(2..cfg.vocab_size as u32))
                .collect(),
            loss_mask: (0..len).map(|i| i >= 32).collect(),
        })
        .collect();
    let sft = SftConfig {
        lr: 1e-5,
        warmup_steps: 0,
        schedule: ScheduleKind::Constant,
        max_steps: Some(steps + 1),
        batch_size: batch,
        grad_accum: 1,
        trainable: trainable.clone(),
        ..SftConfig::default()
    };
    let mut trainer = SftTrainer::new(&cfg, weights, &data, &[], sft)?;
    println!(
        "{trainable:?}: {} trainable parameters",
        trainer.params().num_trainable()
    );
    let warmup = trainer.train_step()?;
    println!("warm-up step: {:.1} tokens/s", warmup.tokens_per_s);
    let (mut tokens, started) = (0usize, Instant::now());
    for _ in 0..steps {
        let stats = trainer.train_step()?;
        tokens += stats.tokens;
        println!(
            "step {}: loss {:.3}, grad norm {:.3}, {:.1} tokens/s",
            stats.step, stats.loss, stats.grad_norm, stats.tokens_per_s
        );
    }
    let rate = tokens as f64 / started.elapsed().as_secs_f64();
    println!(
        "RESULT {trainable:?}: {rate:.1} tokens/s (batch {batch} x {len}), peak RSS {:.0} MiB",
        peak_rss_mib()
    );
    Ok(())
}

#[test]
#[ignore = "needs the SmolLM2 GGUF file; slow; run manually"]
fn real_speed_full_finetune() -> Result<()> {
    speed(Trainable::All)
}

#[test]
#[ignore = "needs the SmolLM2 GGUF file; slow; run manually"]
fn real_speed_lora() -> Result<()> {
    speed(Trainable::Lora(LoraConfig::default()))
}
