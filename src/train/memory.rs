//! The memory a training run will need, estimated before it starts, and the memory the
//! machine has, so that a run that cannot fit stops with a message instead of a kill by the
//! out-of-memory killer.
//!
//! The estimate counts every model weight in f32 (the trained model, and the frozen
//! reference and reward models of PPO), plus their copies in the compute dtype when that is
//! narrower (mixed precision); gradients twice for the trainable part (the store of the
//! backward pass and the accumulated copy the optimizer reads), in f32; AdamW's two moments;
//! and the activations of one forward/backward pass with block checkpointing, sliced
//! attention and sliced log-probabilities, in the compute dtype: one hidden state per block
//! kept for backward, one block's recomputed activations, and the fixed-size f32 slices of
//! scores and logits. The constants were fitted to the peaks measured on SmolLM2-135M in f32
//! (docs/training-memory.md).

use super::params::Trainable;
use crate::model_files::config::LlamaConfig;
use crate::model_files::lora::LoraConfig;
use anyhow::Result;
use candle_core::DType;

const F32: u64 = 4;
/// Values per token of one recomputed block, in units of `hidden` and `intermediate`: q, k,
/// v, attention output, norms, residuals and their gradients (≈ 12 · hidden), and gate, up,
/// activation, product and their gradients (≈ 8 · intermediate).
const BLOCK_HIDDEN_VALUES: u64 = 12;
const BLOCK_INTERMEDIATE_VALUES: u64 = 8;
/// The sliced attention and log-probability tensors alive at once, each 32 MiB.
const SLICE_BUFFERS: u64 = 8;
const SLICE_BYTES: u64 = 32 << 20;
/// Runtime, tokenizer, data and allocator slack, measured as the resident size of a run on
/// the default model before its first step less its weights.
const BASE_BYTES: u64 = 200 << 20;

/// The parts of an estimated peak, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights of every model held (f32, and their copies in a narrower compute dtype).
    pub weights: u64,
    /// Gradients of the trainable parameters (the backward pass's and the accumulated copy).
    pub gradients: u64,
    /// AdamW moments.
    pub optimizer: u64,
    /// Activations of one pass of the largest part of a micro-batch.
    pub activations: u64,
    /// Runtime and data.
    pub base: u64,
    /// See [`MemoryPlan::one_update`].
    pub one_update: bool,
}

impl MemoryEstimate {
    /// Estimated peak resident memory: everything at once from the second update on; in a
    /// run of one update, the larger of the backward pass (both gradient copies and the
    /// activations) and the update (the accumulated gradients and the new moments).
    pub fn peak(&self) -> u64 {
        let working = match self.one_update {
            false => self.gradients + self.optimizer + self.activations,
            true => (self.gradients + self.activations).max(self.gradients / 2 + self.optimizer),
        };
        self.weights + self.base + working
    }

    /// One line: the peak and its parts, in GiB.
    pub fn summary(&self) -> String {
        format!(
            "{} (weights {}, gradients {}, optimizer {}, activations {}, runtime {}{})",
            gib(self.peak()),
            gib(self.weights),
            gib(self.gradients),
            gib(self.optimizer),
            gib(self.activations),
            gib(self.base),
            match self.one_update {
                true => "; one update: the optimizer after the backward pass",
                false => "",
            }
        )
    }
}

/// What a run holds and passes through the model at once.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan<'a> {
    pub model: &'a LlamaConfig,
    pub trainable: &'a Trainable,
    /// Sequences in one forward/backward pass (2 per pair for reward models).
    pub rows: usize,
    /// Padded length of those sequences.
    pub tokens_per_row: usize,
    /// Frozen models of the same size held besides the trained one (PPO: reference and
    /// reward model).
    pub frozen_models: usize,
    /// The run takes a single optimizer update: AdamW's moments are created after its backward
    /// pass, so they never coexist with the activations and the backward pass's gradients.
    pub one_update: bool,
    /// The dtype of the activations (bf16 with mixed precision; see
    /// [`super::precision`]).
    pub compute: DType,
}

/// Number of scalars of the model's weights.
pub fn num_params(cfg: &LlamaConfig) -> u64 {
    cfg.weight_shapes()
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .sum()
}

/// Number of trainable scalars under `trainable`.
pub fn num_trainable(cfg: &LlamaConfig, trainable: &Trainable) -> Result<u64> {
    Ok(match trainable {
        Trainable::Lora(lora) => lora_params(cfg, lora)?,
        _ => cfg
            .weight_shapes()
            .iter()
            .filter(|(name, _)| trainable.is_trainable(cfg, name))
            .map(|(_, shape)| shape.iter().product::<usize>() as u64)
            .sum(),
    })
}

fn lora_params(cfg: &LlamaConfig, lora: &LoraConfig) -> Result<u64> {
    let per_layer: usize = lora
        .target_kinds(cfg)?
        .into_iter()
        .map(|kind| {
            let (i, o) = kind.dims(cfg);
            lora.rank * (i + o)
        })
        .sum();
    Ok((per_layer * cfg.num_hidden_layers) as u64)
}

/// Sequences per forward/backward pass: `rows` of `longest` tokens, fewer when
/// `max_batch_tokens` cuts a micro-batch into parts (at least one).
pub fn rows_per_pass(rows: usize, longest: usize, max_batch_tokens: Option<usize>) -> usize {
    match max_batch_tokens {
        Some(budget) => rows.min(budget / longest.max(1)).max(1),
        None => rows,
    }
}

/// The estimated peak of `plan` (see the module docs).
pub fn estimate(plan: &MemoryPlan) -> Result<MemoryEstimate> {
    let cfg = plan.model;
    let all = num_params(cfg);
    let trained = num_trainable(cfg, plan.trainable)?;
    let tokens = (plan.rows * plan.tokens_per_row) as u64;
    let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let kept = cfg.num_hidden_layers as u64 * 2 * tokens * h;
    let block = tokens * (BLOCK_HIDDEN_VALUES * h + BLOCK_INTERMEDIATE_VALUES * i);
    let act = plan.compute.size_in_bytes() as u64;
    let copies = match plan.compute {
        DType::F32 => 0,
        _ => act,
    };
    Ok(MemoryEstimate {
        weights: (1 + plan.frozen_models as u64) * all * (F32 + copies),
        gradients: 2 * trained * F32,
        optimizer: 2 * trained * F32,
        activations: (kept + block) * act + SLICE_BUFFERS * SLICE_BYTES,
        base: BASE_BYTES,
        one_update: plan.one_update,
    })
}

/// Memory this process may still use: `MemAvailable` of `/proc/meminfo`, or less when a
/// cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`) leaves less. `None` when neither
/// can be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        * 1024;
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    for (limit, usage) in [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ] {
        if let (Some(limit), Some(usage)) = (read(limit), read(usage)) {
            available = available.min(limit.saturating_sub(usage));
        }
    }
    Some(available)
}

/// Bytes as GiB with two decimals.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Prints the estimate of `plan` and the available memory on stderr; when the estimate
/// exceeds it, fails with the settings of `plan` that would fit: fewer rows per pass
/// (`--max-batch-tokens`), or LoRA.
pub fn check_fits(plan: &MemoryPlan, what: &str) -> Result<MemoryEstimate> {
    let est = estimate(plan)?;
    let Some(available) = available_memory() else {
        eprintln!("cai: {what}: estimated peak memory {}", est.summary());
        return Ok(est);
    };
    eprintln!(
        "cai: {what}: estimated peak memory {}; available {}",
        est.summary(),
        gib(available)
    );
    if est.peak() <= available {
        return Ok(est);
    }
    let mut hints = Vec::new();
    let fits = |p: &MemoryPlan| estimate(p).is_ok_and(|e| e.peak() <= available);
    let mut rows = plan.rows;
    while rows > 1 {
        rows /= 2;
        let smaller = MemoryPlan {
            rows,
            ..plan.clone()
        };
        if fits(&smaller) {
            hints.push(format!("--max-batch-tokens {}", rows * plan.tokens_per_row));
            break;
        }
    }
    let lora = Trainable::Lora(LoraConfig::default());
    if plan.trainable.lora().is_none()
        && fits(&MemoryPlan {
            trainable: &lora,
            ..plan.clone()
        })
    {
        hints.push("--lora-rank 8".to_string());
    }
    let hint = match hints.is_empty() {
        true => "no smaller setting fits: free memory or use a smaller model".to_string(),
        false => format!("settings that would fit: {}", hints.join(", or ")),
    };
    anyhow::bail!(
        "{what} needs about {} but {} is available; {hint}",
        gib(est.peak()),
        gib(available)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M: 134.5 M parameters (30 blocks of 3.54 M, 28.3 M embeddings, tied).
    fn smollm2() -> LlamaConfig {
        let mut cfg = LlamaConfig::new(49152, 576, 1536, 30, 9, 3);
        cfg.tie_word_embeddings = true;
        cfg
    }

    #[test]
    fn estimate_of_the_default_model_by_hand() -> Result<()> {
        let cfg = smollm2();
        // Per block: q, o 576² each, k, v 576·192 each, 3 · 576·1536 MLP, 2 norms of 576.
        let block = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576;
        assert_eq!(num_params(&cfg), (30 * block + 49152 * 576 + 576) as u64);
        let plan = MemoryPlan {
            model: &cfg,
            trainable: &Trainable::All,
            rows: 16,
            tokens_per_row: 512,
            frozen_models: 0,
            one_update: false,
            compute: DType::F32,
        };
        let e = estimate(&plan)?;
        let p = num_params(&cfg) * 4;
        assert_eq!((e.weights, e.gradients, e.optimizer), (p, 2 * p, 2 * p));
        // 8192 tokens: 30 · 2 kept hidden states and one block (12 · 576 + 8 · 1536 values
        // per token), f32, plus 8 slices of 32 MiB.
        let tokens = 8192u64;
        let acts = (60 * tokens * 576 + tokens * (12 * 576 + 8 * 1536)) * 4 + 8 * (32 << 20);
        assert_eq!(e.activations, acts);
        assert_eq!(e.peak(), 5 * p + acts + (200 << 20));
        // One update: the moments come after the backward pass (here the larger part).
        let one = estimate(&MemoryPlan {
            one_update: true,
            ..plan.clone()
        })?;
        assert_eq!(one.peak(), p + 2 * p + acts + (200 << 20));
        // Mixed precision: bf16 copies of the weights beside the f32 masters, activations
        // at half the size, the f32 slices unchanged.
        let half = estimate(&MemoryPlan {
            compute: DType::BF16,
            ..plan.clone()
        })?;
        assert_eq!(half.weights, p + p / 2);
        assert_eq!((half.gradients, half.optimizer), (2 * p, 2 * p));
        let slices = 8 * (32 << 20);
        assert_eq!(half.activations, (acts - slices) / 2 + slices);
        // Top layers train 2 blocks and the final norm (the tied embeddings stay frozen).
        let top = Trainable::TopLayers(2);
        assert_eq!(num_trainable(&cfg, &top)?, (2 * block + 576) as u64);
        let lora = Trainable::Lora(LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: vec!["all".into()],
        });
        // Rank 8 on 7 projections: 8 · (in + out) each.
        let per_layer = 8 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3);
        assert_eq!(num_trainable(&cfg, &lora)?, (30 * per_layer) as u64);
        Ok(())
    }

    #[test]
    fn available_memory_is_positive_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(available_memory().is_some_and(|m| m > 0));
        }
    }
}
