//! Supervised fine-tuning: run settings and outcome; the entry point is
//! [`train_sft`](super::trainer::train_sft).
//!
//! The loop itself is [`SftTrainer`]: each optimizer step
//! takes `grad_accum` micro-batches of `batch_size` examples from a data stream that
//! walks a seeded permutation of the training set per epoch, averages the loss over all
//! loss tokens of the step, clips the global gradient norm and applies AdamW.

use super::optim::{AdamWParams, ScheduleKind};
use super::params::Trainable;
use super::precision::Precision;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings of an SFT run. Every field has a default; unknown fields are rejected.
///
/// In JSON (YAML alike): `{"lr": 2e-4, "max_steps": 500, "trainable": {"lora":
/// {"rank": 16, "alpha": 32, "targets": ["all"]}}}`; `trainable` is `"all"`,
/// `{"top_layers": 4}` or `{"lora": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Peak learning rate (default 2e-5; LoRA usually wants ~2e-4).
    pub lr: f64,
    /// Decoupled AdamW weight decay, not applied to norm weights (default 0).
    pub weight_decay: f64,
    /// AdamW β₁ (default 0.9).
    pub adam_beta1: f64,
    /// AdamW β₂ (default 0.999).
    pub adam_beta2: f64,
    /// AdamW ε (default 1e-8).
    pub adam_eps: f64,
    /// Steps of linear warmup from 0 to `lr` (default 10).
    pub warmup_steps: usize,
    /// Decay after warmup: `cosine` (default), `linear` or `constant`.
    pub schedule: ScheduleKind,
    /// Final learning rate as a fraction of `lr` (default 0.1).
    pub min_lr_ratio: f64,
    /// Passes over the training set, used when `max_steps` is unset (default 1). The
    /// step count is rounded up to whole steps.
    pub epochs: usize,
    /// Number of optimizer steps; overrides `epochs` when set (default unset).
    pub max_steps: Option<usize>,
    /// Examples per micro-batch (default 4).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (default 4).
    pub grad_accum: usize,
    /// Global gradient-norm clip; 0 disables clipping (default 1.0).
    pub max_grad_norm: f64,
    /// Held-out loss every this many steps, and always at the end; 0 = only at the end
    /// (default 50).
    pub eval_every: usize,
    /// Checkpoint every this many steps; 0 = none besides the final model (default 200).
    pub save_every: usize,
    /// What is trained: `all` (default), `{top_layers: n}` or `{lora: {rank, alpha,
    /// targets}}`.
    pub trainable: Trainable,
    /// Seed of the data order and of LoRA initialisation (default 0).
    pub seed: u64,
    /// Examples are cut to this many tokens (default 1024).
    pub max_len: usize,
    /// Token budget of one forward/backward pass: a micro-batch whose padded size (rows ×
    /// longest row) is larger runs as several parts of at most this many tokens, their
    /// gradients accumulated, for the same update (default 4096; `null`: whole
    /// micro-batches). The default leaves SFT's and DPO's default micro-batches whole and
    /// runs the reward model's 8 pairs of 512 tokens as two parts, which keeps its peak
    /// memory within 4 GiB on the default model.
    pub max_batch_tokens: Option<usize>,
    /// Number format of the forward and backward passes: `auto` (default: bf16 with f32
    /// master weights on a GPU, f32 on the CPU), `f32` or `bf16`.
    pub dtype: Precision,
}

/// Default token budget of one forward/backward pass (see [`SftConfig::max_batch_tokens`]).
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 4096;

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            lr: 2e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            warmup_steps: 10,
            schedule: ScheduleKind::Cosine,
            min_lr_ratio: 0.1,
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            grad_accum: 4,
            max_grad_norm: 1.0,
            eval_every: 50,
            save_every: 200,
            trainable: Trainable::All,
            seed: 0,
            max_len: 1024,
            max_batch_tokens: Some(DEFAULT_MAX_BATCH_TOKENS),
            dtype: Precision::Auto,
        }
    }
}

impl SftConfig {
    /// Checks that the settings describe a runnable training job.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.lr.is_finite() && self.lr > 0.0, "lr must be positive");
        ensure!(
            self.batch_size > 0 && self.grad_accum > 0,
            "batch_size and grad_accum must be positive"
        );
        ensure!(self.max_len >= 2, "max_len must be at least 2");
        ensure!(
            self.max_batch_tokens != Some(0),
            "max_batch_tokens must be positive"
        );
        ensure!(
            self.max_steps.map_or(self.epochs > 0, |n| n > 0),
            "set epochs or max_steps to a positive number"
        );
        ensure!(
            (0.0..=1.0).contains(&self.min_lr_ratio),
            "min_lr_ratio must be within [0, 1]"
        );
        ensure!(
            (0.0..1.0).contains(&self.adam_beta1) && (0.0..1.0).contains(&self.adam_beta2),
            "adam betas must be within [0, 1)"
        );
        ensure!(
            self.weight_decay >= 0.0,
            "weight_decay must not be negative"
        );
        Ok(())
    }

    pub(super) fn adamw(&self) -> AdamWParams {
        AdamWParams {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Number of optimizer steps for `num_examples` training examples.
    pub fn total_steps(&self, num_examples: usize) -> usize {
        self.max_steps.unwrap_or_else(|| {
            let micro_per_epoch = num_examples.div_ceil(self.batch_size.max(1));
            (self.epochs * micro_per_epoch).div_ceil(self.grad_accum.max(1))
        })
    }
}

/// A non-finite loss or gradient norm stopped the run.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFiniteError {
    /// The optimizer step that failed (1-based).
    pub step: usize,
    /// What was non-finite, e.g. `"loss"`.
    pub what: &'static str,
    /// The offending value.
    pub value: f64,
    /// The last checkpoint written before the failure, if any.
    pub last_checkpoint: Option<PathBuf>,
}

impl std::fmt::Display for NonFiniteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {} at step {}", self.what, self.value, self.step)?;
        match &self.last_checkpoint {
            Some(p) => write!(f, "; last good checkpoint: {}", p.display()),
            None => write!(f, "; no checkpoint was written before it"),
        }
    }
}

impl std::error::Error for NonFiniteError {}

/// Result of a finished run.
#[derive(Debug, Clone)]
pub struct SftSummary {
    /// Optimizer steps taken in total.
    pub steps: usize,
    /// Loss of the last step.
    pub final_loss: Option<f64>,
    /// Held-out loss at the end (`None` without eval examples).
    pub final_eval_loss: Option<f64>,
    /// The final model folder (merged weights for LoRA runs).
    pub final_dir: PathBuf,
    /// Training examples cut to `max_len`.
    pub truncated: usize,
    /// Training examples dropped for having no loss target.
    pub dropped: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_partial_json_and_rejects_unknown_fields() {
        let cfg: SftConfig = serde_json::from_str(r#"{"lr": 1e-4, "max_steps": 100}"#).unwrap();
        assert_eq!(
            (cfg.lr, cfg.max_steps, cfg.batch_size),
            (1e-4, Some(100), 4)
        );
        assert_eq!(cfg.trainable, Trainable::All);
        let cfg: SftConfig = serde_json::from_str(r#"{"trainable": {"top_layers": 2}}"#).unwrap();
        assert_eq!(cfg.trainable, Trainable::TopLayers(2));
        let text =
            r#"{"trainable": {"lora": {"rank": 16, "targets": ["all"]}}, "schedule": "linear"}"#;
        let cfg: SftConfig = serde_json::from_str(text).unwrap();
        let lora = cfg.trainable.lora().unwrap();
        assert_eq!((lora.rank, lora.alpha, lora.targets.len()), (16, 16.0, 1));
        assert_eq!(cfg.schedule, ScheduleKind::Linear);
        assert!(serde_json::from_str::<SftConfig>(r#"{"learning_rate": 1e-4}"#).is_err());
        assert!(SftConfig::default().validate().is_ok());
        let no_steps = SftConfig {
            epochs: 0,
            ..SftConfig::default()
        };
        assert!(no_steps.validate().is_err());
    }

    #[test]
    fn total_steps_round_up() {
        let cfg = SftConfig {
            epochs: 2,
            batch_size: 4,
            grad_accum: 3,
            ..SftConfig::default()
        };
        // 10 examples: 3 micro-batches per epoch, 6 in all, 2 steps.
        assert_eq!(cfg.total_steps(10), 2);
        assert_eq!(cfg.total_steps(13), 3);
    }
}
