//! `cai train ppo`: PPO against the reward model or the feedback model, or its critic-free
//! variants (GRPO, RLOO, REINFORCE).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::args::{choice, TrainableArgs};
use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::llm::BackendKind;
use crate::stages::ppo::{self, PpoRunConfig, RewardWeights};
use crate::train::advantage::AdvantageEstimator;
use crate::train::ppo_math::LossAggregation;
use crate::train::{LoraConfig, Precision};

/// `--reward`: one source alone; mixes are set in the config's `reward:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardSource {
    /// The reward model (`--reward-model`).
    Rm,
    /// The feedback model's expected 1–10 rating under a principle drawn per prompt
    /// (`labeler:`).
    Labeler,
}

/// The flags of `cai train ppo`: PPO, or GRPO / RLOO / REINFORCE with `--advantage`. The flags most runs
/// change; every other setting (clip ranges, GAE, whitening, PPO-ptx, guards…) lives in the
/// `--config` YAML (`PpoRunConfig`, PPO settings under `ppo:`).
#[derive(Debug, Args, Serialize)]
pub struct PpoArgs {
    /// YAML file with any PpoRunConfig fields; flags override it. Rollouts are sampled with
    /// `ppo.temperature` and `ppo.top_p` only: no top-k, min-p or repetition penalties, which
    /// would make the sampled tokens' log-probabilities differ from the policy's.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Starting policy: the `final/` folder of `cai train sft`, or any model.
    #[arg(long)]
    pub policy: Option<String>,
    /// Reference model of the KL penalty (by default the starting policy).
    #[arg(long)]
    pub reference: Option<String>,
    /// Reward model folder (the `final/` folder of `cai train rm`).
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// Reward source: `rm` (the reward model; default) or `labeler` (the feedback model's
    /// expected 1–10 rating of each response under a comparison principle drawn from
    /// --constitution once per prompt, so a group shares one rubric, as `cai label --mode
    /// score` asks; a response whose feedback prompt overflows the context is unscored and
    /// left out). Weighted mixes: `reward: {reward_model: 1, labeler: 0.2}` in the --config
    /// YAML.
    #[arg(long, value_enum)]
    pub reward: Option<RewardSource>,
    /// Constitution of the feedback reward.
    #[arg(long)]
    pub constitution: Option<PathBuf>,
    /// Feedback model of the labeler reward.
    #[arg(long)]
    pub labeler_model: Option<String>,
    /// Backend of the feedback model.
    #[arg(long, value_parser = choice::<BackendKind>())]
    pub labeler_backend: Option<BackendKind>,
    /// Prompts to sample responses for.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// SFT data for PPO-ptx (set `ppo.ptx_coef` > 0 to use it).
    #[arg(long)]
    pub ptx_data: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long, overrides_with = "no_resume")]
    pub resume: bool,
    /// Start afresh (undoes `resume: true` in --config).
    #[arg(long, overrides_with = "resume")]
    pub no_resume: bool,
    /// PPO steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Responses sampled per step.
    #[arg(long)]
    pub rollouts: Option<usize>,
    /// Responses per optimizer update.
    #[arg(long)]
    pub minibatch: Option<usize>,
    /// Token budget of one forward/backward pass: minibatches larger than this (responses ×
    /// longest prompt + response) run in parts whose gradients are accumulated, for the same
    /// update.
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Number format of the policy's and the reference's passes (bf16 keeps f32 master
    /// weights; GPU only).
    #[arg(long, value_parser = choice::<Precision>())]
    pub dtype: Option<Precision>,
    /// Advantage estimator. The critic-free ones sample --group-size
    /// responses per prompt and train no value head; `ppo.kl_in_loss: true` moves their KL
    /// from the score to a k3 loss term, `ppo.scale_rewards: false` with
    /// `--loss-aggregation seq-sum-norm` is Dr. GRPO.
    #[arg(long, value_parser = choice::<AdvantageEstimator>())]
    pub advantage: Option<AdvantageEstimator>,
    /// Responses per prompt (G) for grpo, rloo and reinforce; --rollouts must be a multiple.
    #[arg(long)]
    pub group_size: Option<usize>,
    /// How an update's per-token policy loss (and k3 KL term) is reduced: the mean over all
    /// its response tokens (DAPO; long responses weigh more), the mean of each response's
    /// token mean (GRPO), or the token sum over responses × --max-new-tokens (Dr. GRPO, with
    /// `ppo.scale_rewards: false`). `policy_loss` in train_log.csv is the clipped surrogate
    /// so aggregated.
    #[arg(long, value_parser = choice::<LossAggregation>())]
    pub loss_aggregation: Option<LossAggregation>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Initial KL coefficient β.
    #[arg(long)]
    pub kl_coef: Option<f64>,
    /// Adaptive β with this target KL per response (nats).
    #[arg(long)]
    pub kl_target: Option<f64>,
    /// New tokens per response (`--max-tokens` is the other spelling).
    #[arg(long, visible_alias = "max-tokens")]
    pub max_new_tokens: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub trainable: TrainableArgs,
    /// Seed of prompt order, sampling and minibatches.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Checkpoint every N steps.
    #[arg(long)]
    pub save_every: Option<usize>,
    /// No progress bar.
    #[arg(long, short, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Show the progress bar (undoes `quiet: true` in --config).
    #[arg(long, overrides_with = "quiet")]
    pub no_quiet: bool,
}

impl Flags for PpoArgs {
    type Config = PpoRunConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// The PPO settings are under `ppo:`, the feedback model's under `labeler:`.
    fn to(id: &str) -> Option<To> {
        let key = match id {
            "reward" => return Some(To::Mapped("reward".into(), reward_weights)),
            "trainable" | "top_layers" | "lora_rank" | "lora_alpha" | "lora_targets" => {
                return Some(To::Explicit)
            }
            "constitution" => "labeler.constitution".into(),
            "labeler_model" => "labeler.model".into(),
            "labeler_backend" => "labeler.backend".into(),
            "steps" | "rollouts" | "minibatch" | "max_batch_tokens" | "dtype" | "advantage"
            | "group_size" | "loss_aggregation" | "lr" | "kl_coef" | "kl_target"
            | "max_new_tokens" | "seed" => format!("ppo.{id}"),
            _ => return None,
        };
        Some(To::key(key))
    }

    /// The trainable group, checks.
    fn finish(&self, c: &mut PpoRunConfig) -> Result<()> {
        let w = &c.reward;
        ensure!(
            w.reward_model >= 0.0 && w.labeler >= 0.0 && w.reward_model + w.labeler > 0.0,
            "reward weights must not be negative and one must be positive (reward_model {}, \
             labeler {})",
            w.reward_model,
            w.labeler
        );
        let p = &mut c.ppo;
        self.trainable
            .apply(&mut p.trainable, &LoraConfig::default())?;
        p.validate()?;
        Ok(())
    }
}

/// `--reward rm|labeler` as the weights of `reward:`.
fn reward_weights(source: &serde_json::Value) -> serde_json::Value {
    let w = match source.as_str() {
        Some("labeler") => RewardWeights {
            reward_model: 0.0,
            labeler: 1.0,
        },
        _ => RewardWeights::default(),
    };
    serde_json::to_value(w).expect("weights serialise")
}

/// Defaults for `--help`: the config's (the PPO settings are under `ppo:`).
pub fn help_defaults() -> (PpoRunConfig, Vec<(&'static str, Source)>) {
    let d = PpoRunConfig::default();
    let trainable = Source::Text(super::args::describe_trainable(&d.ppo.trainable));
    (
        d,
        vec![
            ("max_new_tokens", Source::Path("ppo.max_new_tokens")),
            ("labeler_model", Source::Path("labeler.model")),
            ("labeler_backend", Source::Path("labeler.backend")),
            ("constitution", Source::Path("labeler.constitution")),
            ("seed", Source::Path("ppo.seed")),
            ("lr", Source::Path("ppo.lr")),
            ("trainable", trainable),
        ],
    )
}

/// Runs `cai train ppo`.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<PpoArgs>(m)?;
    let s = ppo::run(&cfg)?;
    if let (Some(a), Some(b)) = (&s.first, &s.last) {
        eprintln!(
            "cai: train ppo: {} steps on {} prompts; score {:.3} -> {:.3}, KL {:.3} -> \
             {:.3}, response length {:.1} -> {:.1}; {:.1} s/step -> {}",
            s.steps,
            s.prompts,
            a.score,
            b.score,
            a.kl,
            b.kl,
            a.response_len,
            b.response_len,
            s.seconds_per_step,
            s.final_dir.display()
        );
    }
    if !s.repeated_phrases.is_empty() {
        let top: Vec<String> = s
            .repeated_phrases
            .iter()
            .map(|(p, n)| format!("\"{p}\" ×{n}"))
            .collect();
        eprintln!(
            "cai: train ppo: most repeated phrases of the last step: {}",
            top.join(", ")
        );
    }
    Ok(())
}
