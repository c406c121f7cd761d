//! Settings and per-step statistics of PPO.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use super::advantage::AdvantageEstimator;
use super::optim::{AdamWParams, LrSchedule, ScheduleKind};
use super::params::Trainable;
use super::ppo_math::{AdaptiveKl, KlEstimator, LossAggregation};
use super::precision::Precision;

/// Settings of a PPO run (defaults follow Ziegler et al. 2019 and TRL where they apply,
/// scaled down for CPU). Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// PPO steps; each samples `rollouts` responses and trains on them (default 20).
    pub steps: usize,
    /// Responses sampled per step (default 8).
    pub rollouts: usize,
    /// Responses per optimizer update (default 4).
    pub minibatch: usize,
    /// Token budget of one forward/backward pass: a minibatch (or PPO-ptx batch) whose
    /// padded size (rows × longest prompt + response) is larger runs in parts of at most this
    /// many tokens, their gradients accumulated, for the same update (default 4096, as
    /// the other trainers; `null`: whole minibatches).
    pub max_batch_tokens: Option<usize>,
    /// Number format of the policy's passes (rollouts and updates): `auto` (default: bf16
    /// with f32 master weights on a GPU, f32 on the CPU), `f32` or `bf16`. The frozen
    /// reference computes in the same format.
    pub dtype: Precision,
    /// Advantage estimator: `gae` (value head, PPO; default), or the critic-free `grpo`,
    /// `rloo` and `reinforce`, which train no value head.
    pub advantage: AdvantageEstimator,
    /// Responses sampled per prompt for `grpo`, `rloo` and `reinforce` (G, default 4);
    /// `rollouts` must be a multiple of it. GAE samples one response per prompt.
    pub group_size: usize,
    /// GRPO: divide the centred scores by the group's standard deviation (default true;
    /// false, with `loss_aggregation: seq-sum-norm`, is Dr. GRPO).
    pub scale_rewards: bool,
    /// Critic-free estimators: the KL to the reference as a loss term `β · k3` per token,
    /// aggregated as the policy loss (GRPO's form), instead of `−β·Σ KL` in the score
    /// (default false).
    pub kl_in_loss: bool,
    /// How an update's per-token policy loss (and k3 KL term) becomes one number:
    /// `token-mean` (default: mean over the update's response tokens, DAPO), `seq-mean` (mean
    /// of each response's token mean, GRPO) or `seq-sum-norm` (token sum over responses ×
    /// `max_new_tokens`, Dr. GRPO). The value loss is always a token mean.
    pub loss_aggregation: LossAggregation,
    /// Passes over a step's rollouts (default 2).
    pub ppo_epochs: usize,
    /// Peak learning rate (default 1e-5; LoRA usually wants ~1e-4).
    pub lr: f64,
    /// Warmup steps of the learning rate, in PPO steps (default 0).
    pub warmup_steps: usize,
    /// Learning-rate curve after warmup (default `constant`).
    pub schedule: ScheduleKind,
    /// Global gradient-norm clip; 0 disables it (default 1.0).
    pub max_grad_norm: f64,
    /// AdamW weight decay (default 0).
    pub weight_decay: f64,
    /// Policy ratio clip ε (default 0.2).
    pub clip: f64,
    /// Value clip around the rollout-time values (default 0.2).
    pub value_clip: f64,
    /// Weight of the value loss (default 0.1).
    pub vf_coef: f64,
    /// Discount γ (default 1.0) and GAE λ (default 0.95).
    pub gamma: f64,
    pub lambda: f64,
    /// KL estimator of the per-token penalty (default `k1`).
    pub kl_estimator: KlEstimator,
    /// Initial KL coefficient β (default 0.05).
    pub kl_coef: f64,
    /// Adaptive β: target KL per response (nats); unset keeps β fixed (default unset).
    pub kl_target: Option<f64>,
    /// Horizon of the adaptive controller, in responses (default 10000).
    pub kl_horizon: f64,
    /// Whiten the rewards across a step with their mean kept (default false): GAE whitens
    /// the per-token rewards; the critic-free estimators whiten each response's return (its
    /// score minus β·Σ KL), so that no term grows with the response's length.
    pub whiten_rewards: bool,
    /// Subtracted from the score of a response that hit `max_new_tokens` without a stop
    /// token; unset disables it (default 1.0).
    pub no_eos_penalty: Option<f64>,
    /// Weight of the language-modelling loss on SFT data (PPO-ptx); 0 disables (default 0).
    pub ptx_coef: f64,
    /// Sampling of rollouts (default temperature 1, top-p 1, 48 new tokens). Deliberately
    /// without the top-k, min-p and penalty options of the other stages: PPO's ratios and KL
    /// use log softmax(logits / T) of each sampled token, which is the distribution sampled
    /// from only when nothing else reshapes it (top-p below 1 already makes rollouts slightly
    /// off-policy).
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// What is trained: `all`, `{top_layers: n}` or `{lora: {...}}` (default top 2 layers).
    pub trainable: Trainable,
    /// Seed of prompt order, sampling, minibatches and LoRA init (default 0).
    pub seed: u64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            steps: 20,
            rollouts: 8,
            minibatch: 4,
            max_batch_tokens: Some(super::sft::DEFAULT_MAX_BATCH_TOKENS),
            dtype: Precision::Auto,
            advantage: AdvantageEstimator::Gae,
            group_size: 4,
            scale_rewards: true,
            kl_in_loss: false,
            loss_aggregation: LossAggregation::TokenMean,
            ppo_epochs: 2,
            lr: 1e-5,
            warmup_steps: 0,
            schedule: ScheduleKind::Constant,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            clip: 0.2,
            value_clip: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lambda: 0.95,
            kl_estimator: KlEstimator::K1,
            kl_coef: 0.05,
            kl_target: None,
            kl_horizon: 10_000.0,
            whiten_rewards: false,
            no_eos_penalty: Some(1.0),
            ptx_coef: 0.0,
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 48,
            trainable: Trainable::TopLayers(2),
            seed: 0,
        }
    }
}

impl PpoConfig {
    /// Rejects settings that cannot run.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.steps > 0, "steps must be at least 1");
        ensure!(
            self.rollouts > 0 && self.minibatch > 0,
            "rollouts and minibatch must be positive"
        );
        ensure!(self.ppo_epochs > 0, "ppo_epochs must be at least 1");
        ensure!(
            self.max_batch_tokens != Some(0),
            "max_batch_tokens must be positive"
        );
        if !self.advantage.uses_critic() {
            let g = self.group_size;
            ensure!(
                g > 0 && self.rollouts.is_multiple_of(g),
                "rollouts ({}) must be a multiple of group_size ({g})",
                self.rollouts
            );
            ensure!(
                g >= 2 || self.advantage == AdvantageEstimator::Reinforce,
                "{:?} compares the responses to one prompt: group_size must be at least 2",
                self.advantage
            );
        } else {
            ensure!(
                !self.kl_in_loss,
                "kl_in_loss is for the critic-free estimators; GAE puts the KL in the reward"
            );
        }
        ensure!(self.lr.is_finite() && self.lr > 0.0, "lr must be positive");
        ensure!(
            self.clip > 0.0 && self.value_clip > 0.0,
            "clip and value_clip must be positive"
        );
        ensure!(
            (0.0..=1.0).contains(&self.gamma) && (0.0..=1.0).contains(&self.lambda),
            "gamma and lambda must lie in [0, 1]"
        );
        ensure!(self.kl_coef >= 0.0, "kl_coef must not be negative");
        if let Some(t) = self.kl_target {
            ensure!(t > 0.0, "kl_target must be positive");
            ensure!(self.kl_horizon > 0.0, "kl_horizon must be positive");
        }
        ensure!(self.max_new_tokens > 0, "max_new_tokens must be at least 1");
        ensure!(
            self.temperature > 0.0,
            "PPO samples from the policy: temperature must be positive"
        );
        ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p must lie in (0, 1]"
        );
        Ok(())
    }

    pub(super) fn adamw(&self) -> AdamWParams {
        AdamWParams {
            weight_decay: self.weight_decay,
            ..AdamWParams::default()
        }
    }

    pub(super) fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak_lr: self.lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
            kind: self.schedule,
            min_lr_ratio: 0.1,
        }
    }

    pub(super) fn adaptive(&self) -> Option<AdaptiveKl> {
        self.kl_target.map(|target| AdaptiveKl {
            target,
            horizon: self.kl_horizon,
        })
    }
}

/// What one PPO step measured (a row of `train_log.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoStepStats {
    pub step: usize,
    /// Mean score of the scored responses (reward model and/or feedback model, before the
    /// no-EOS penalty).
    pub score: f64,
    /// Mean total reward per scored response (score − penalty − β·KL, before whitening).
    pub reward: f64,
    /// Responses without a score (their feedback prompt overflowed the feedback model's
    /// context): no advantage, left out of the loss and of `score` and `reward`.
    #[serde(default)]
    pub unscored: usize,
    /// Mean KL to the reference per sampled response (sum over its tokens, nats).
    pub kl: f64,
    /// KL coefficient used this step.
    pub beta: f64,
    /// Mean per-token entropy of the policy at rollout time, over all response tokens.
    pub entropy: f64,
    /// Fraction of the updates' response tokens where the policy ratio was clipped.
    pub clip_frac: f64,
    /// Mean ½(log π − log π_old)² over the updates: how far an update moved the policy.
    pub approx_kl: f64,
    /// The clipped surrogate aggregated by `loss_aggregation` (k3 KL term excluded), mean
    /// over the step's updates.
    pub policy_loss: f64,
    pub value_loss: f64,
    /// Fraction of tokens where the value was clipped.
    pub value_clip_frac: f64,
    /// Explained variance of the rollout-time values for the returns.
    pub explained_variance: Option<f64>,
    /// Mean response length in tokens, over all sampled responses.
    pub response_len: f64,
    /// Fraction of the sampled responses that ended with a stop token.
    pub ended: f64,
    /// Mean language-modelling loss on SFT data (PPO-ptx), when enabled.
    pub ptx_loss: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
}
