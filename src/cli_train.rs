//! Command-line interface of `cai train`: one subcommand per training stage (`sft`, `rm`,
//! `ppo`, `dpo`). Doc comments are the `--help`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};

use crate::sft_data::RoundChoice;
use crate::train::advantage::AdvantageEstimator;
use crate::train::{LoraConfig, ScheduleKind, Trainable};

/// `cai train <stage>`.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning on critique → revision data (SL-CAI) or TRL SFT rows.
    Sft(SftArgs),
    /// Reward model on AI and/or human preference labels, evaluated on held-out human labels.
    Rm(crate::cli_rm::RmArgs),
    /// PPO of the SFT policy against the reward model, with a KL penalty to the SFT model;
    /// `--advantage grpo|rloo|reinforce` for the critic-free variants.
    Ppo(PpoArgs),
    /// DPO (and cDPO, rDPO, IPO, SLiC) of a policy on AI labels, human pairs and SL-CAI
    /// revision pairs, against a frozen reference: no reward model, no sampling.
    ///
    /// Data, any mix (`FILE:WEIGHT` weights a file's pairs in the loss): `cai label` rows keep
    /// their soft label p_a; human pairs (HH-RLHF, TRL preference rows, ours) their human label
    /// (rows without one are skipped); `cai revise` records give the SL-CAI pair "final
    /// revision preferred to the initial answer" (records never revised are skipped). Pairs
    /// whose two responses are the same text or, after --max-len, the same tokens carry no
    /// preference and are dropped. Labels of exactly 0.5 (ties) are dropped by the losses that
    /// round the label (sigmoid, robust, hinge) and kept by cdpo and ipo, which pull a tie's
    /// margin to 0. Every drop is counted on stderr; no pair left is an error.
    Dpo(crate::cli_dpo::DpoArgs),
}

/// `--reward`: one source alone; mixes are set in the config's `reward:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RewardSource {
    /// The reward model (`--reward-model`).
    Rm,
    /// The feedback model's expected 1–10 rating under a sampled principle (`labeler:`).
    Labeler,
}

/// What `--trainable` names; `--top-layers` and `--lora-*` give the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrainableKind {
    /// Every weight (full fine-tuning).
    All,
    /// The last `--top-layers N` blocks.
    TopLayers,
    /// LoRA adapters only (`--lora-rank`, `--lora-alpha`, `--lora-targets`).
    Lora,
}

/// Which weights a training stage updates: the same flags for `train sft`, `rm` and `ppo`.
#[derive(Debug, Clone, Default, Args)]
pub struct TrainableArgs {
    /// What is trained [default: all for sft and rm, top-layers 2 for ppo].
    #[arg(long, value_enum)]
    pub trainable: Option<TrainableKind>,
    /// Train only the last N blocks (implies --trainable top-layers).
    #[arg(long, conflicts_with_all = ["lora_rank", "lora_alpha", "lora_targets"])]
    pub top_layers: Option<usize>,
    /// LoRA rank (implies --trainable lora) [default: 8].
    #[arg(long, visible_alias = "lora")]
    pub lora_rank: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha / rank [default: 16].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA target modules, comma separated, or `all` [default: q_proj,v_proj for sft and
    /// ppo, all for rm].
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
}

impl TrainableArgs {
    /// The flags applied to `t` (the stage's default or its `--config` choice). LoRA settings
    /// not given come from `t` when it is already LoRA, else from `lora`.
    pub fn apply(&self, t: &mut Trainable, lora: &LoraConfig) -> Result<()> {
        let lora_flags =
            self.lora_rank.is_some() || self.lora_alpha.is_some() || self.lora_targets.is_some();
        let kind = match (self.trainable, self.top_layers, lora_flags) {
            (Some(k), _, _) => k,
            (None, Some(_), _) => TrainableKind::TopLayers,
            (None, None, true) => TrainableKind::Lora,
            (None, None, false) => return Ok(()),
        };
        *t = match kind {
            TrainableKind::All => Trainable::All,
            TrainableKind::TopLayers => match (self.top_layers, &*t) {
                (Some(n), _) => Trainable::TopLayers(n),
                (None, Trainable::TopLayers(n)) => Trainable::TopLayers(*n),
                _ => bail!("--trainable top-layers needs --top-layers N"),
            },
            TrainableKind::Lora => {
                let mut l = t.lora().unwrap_or(lora).clone();
                if let Some(rank) = self.lora_rank {
                    l.rank = rank;
                }
                if let Some(alpha) = self.lora_alpha {
                    l.alpha = alpha;
                }
                if let Some(targets) = &self.lora_targets {
                    l.targets = targets.clone();
                }
                Trainable::Lora(l)
            }
        };
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct SftArgs {
    /// YAML file with any SftRunConfig fields (training settings under `train:`); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base model: `default`, a .gguf file, a model folder (a cai checkpoint too) or a
    /// Hugging Face id from the local cache [default: default].
    #[arg(long)]
    pub model: Option<String>,
    /// Training data: `cai revise` output, or TRL SFT rows (`messages`, or
    /// `prompt`/`completion`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Which revision of `cai revise` records is the target: `final` (default), `all` (one
    /// example per round, SL-CAI-n) or a round number from 1.
    #[arg(long)]
    pub round: Option<RoundChoice>,
    /// Output folder: checkpoint-N/, final/, train_log.csv, loss.svg, manifest.json
    /// [default: runs/sft].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fraction of the data held out for the eval loss [default: 0.1].
    #[arg(long, conflicts_with = "eval")]
    pub eval_split: Option<f64>,
    /// Held-out data file (same formats as --data) instead of a split.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Peak learning rate [default: 2e-5].
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Passes over the data when --max-steps is not set [default: 1].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Examples per micro-batch [default: 4].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 4].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Linear warmup steps [default: 10].
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Learning-rate decay after warmup: cosine, linear or constant [default: cosine].
    #[arg(long, value_parser = parse_schedule)]
    pub schedule: Option<ScheduleKind>,
    /// Final learning rate as a fraction of --lr [default: 0.1].
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,
    /// Gradient-norm clip, 0 = none [default: 1.0].
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Held-out loss every N steps (and at the end) [default: 50].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps [default: 200].
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Examples are cut to this many tokens, with a counted warning [default: 1024].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Token budget of one forward/backward pass: micro-batches larger than this (rows ×
    /// longest row) run in parts whose gradients are accumulated, for the same update
    /// [default: 4096].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Seed of the data order, the eval split and LoRA initialisation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub trainable: TrainableArgs,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_schedule(s: &str) -> Result<ScheduleKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown schedule `{s}` (cosine, linear or constant)"))
}

/// `cai train ppo`: PPO, or GRPO / RLOO / REINFORCE with `--advantage`. The flags most runs
/// change; every other setting (clip ranges, GAE, whitening, PPO-ptx, guards…) lives in the
/// `--config` YAML (`PpoRunConfig`, PPO settings under `ppo:`).
#[derive(Debug, Args)]
pub struct PpoArgs {
    /// YAML file with any PpoRunConfig fields; flags override it. Rollouts are sampled with
    /// `ppo.temperature` and `ppo.top_p` only: no top-k, min-p or repetition penalties, which
    /// would make the sampled tokens' log-probabilities differ from the policy's.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Starting policy: the `final/` folder of `cai train sft`, or any model
    /// [default: runs/sft/final].
    #[arg(long)]
    pub policy: Option<String>,
    /// Reference model of the KL penalty [default: the starting policy].
    #[arg(long)]
    pub reference: Option<String>,
    /// Reward model folder (the `final/` folder of `cai train rm`).
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// Reward source: `rm` (the reward model; default) or `labeler` (the feedback model's
    /// expected 1–10 rating of each response under a comparison principle drawn from
    /// --constitution, as `cai label --mode score` asks). Weighted mixes: `reward:
    /// {reward_model: 1, labeler: 0.2}` in the --config YAML.
    #[arg(long, value_enum)]
    pub reward: Option<RewardSource>,
    /// Constitution of the feedback reward [default: constitutions/harmless.yaml].
    #[arg(long)]
    pub constitution: Option<PathBuf>,
    /// Feedback model of the labeler reward [default: default].
    #[arg(long)]
    pub labeler_model: Option<String>,
    /// Backend of the feedback model [default: local].
    #[arg(long, value_enum)]
    pub labeler_backend: Option<crate::llm::BackendKind>,
    /// Prompts to sample responses for [default: data/sample-prompts.jsonl].
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// SFT data for PPO-ptx (set `ppo.ptx_coef` > 0 to use it).
    #[arg(long)]
    pub ptx_data: Option<PathBuf>,
    /// Output folder [default: runs/ppo].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// PPO steps [default: 20].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Responses sampled per step [default: 8].
    #[arg(long)]
    pub rollouts: Option<usize>,
    /// Responses per optimizer update [default: 4].
    #[arg(long)]
    pub minibatch: Option<usize>,
    /// Token budget of one forward/backward pass: minibatches larger than this (responses ×
    /// longest prompt + response) run in parts whose gradients are accumulated, for the same
    /// update [default: 4096].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Advantage estimator [default: gae]. The critic-free ones sample --group-size
    /// responses per prompt and train no value head; `ppo.kl_in_loss: true` moves their KL
    /// from the score to a k3 loss term, `ppo.scale_rewards: false` is Dr. GRPO.
    #[arg(long, value_enum)]
    pub advantage: Option<AdvantageEstimator>,
    /// Responses per prompt (G) for grpo, rloo and reinforce; --rollouts must be a multiple
    /// [default: 4].
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Peak learning rate [default: 1e-5].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Initial KL coefficient β [default: 0.05].
    #[arg(long)]
    pub kl_coef: Option<f64>,
    /// Adaptive β with this target KL per response (nats).
    #[arg(long)]
    pub kl_target: Option<f64>,
    /// New tokens per response [default: 48].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[command(flatten)]
    pub trainable: TrainableArgs,
    /// Seed of prompt order, sampling and minibatches [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Checkpoint every N steps [default: 5].
    #[arg(long)]
    pub save_every: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        t: TrainableArgs,
    }

    /// `argv` applied to `start`, with the stage's LoRA default `lora`.
    fn apply(argv: &[&str], start: Trainable, lora: &LoraConfig) -> Result<Trainable> {
        let w = Wrap::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))?;
        let mut t = start;
        w.t.apply(&mut t, lora)?;
        Ok(t)
    }

    #[test]
    fn trainable_flags_resolve_the_same_for_every_stage() -> Result<()> {
        let all_linear = LoraConfig {
            targets: vec!["all".into()],
            ..LoraConfig::default()
        };
        // No flag: the stage's choice stands.
        assert_eq!(
            apply(&[], Trainable::TopLayers(2), &all_linear)?,
            Trainable::TopLayers(2)
        );
        // `--lora R` (rm's older spelling) is `--lora-rank R`; unset fields from the default.
        assert_eq!(
            apply(&["--lora", "4"], Trainable::All, &all_linear)?,
            Trainable::Lora(LoraConfig {
                rank: 4,
                ..all_linear.clone()
            })
        );
        // Settings already LoRA keep what the flags do not change.
        let yaml = Trainable::Lora(LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec!["q_proj".into()],
        });
        assert_eq!(
            apply(&["--lora-alpha", "2"], yaml.clone(), &all_linear)?,
            Trainable::Lora(LoraConfig {
                rank: 4,
                alpha: 2.0,
                targets: vec!["q_proj".into()],
            })
        );
        assert_eq!(
            apply(&["--trainable", "all"], yaml, &all_linear)?,
            Trainable::All
        );
        assert_eq!(
            apply(&["--top-layers", "3"], Trainable::All, &all_linear)?,
            Trainable::TopLayers(3)
        );
        // Contradictions are errors, not silent choices.
        assert!(apply(
            &["--top-layers", "3", "--lora-rank", "4"],
            Trainable::All,
            &all_linear
        )
        .is_err());
        assert!(apply(&["--trainable", "top-layers"], Trainable::All, &all_linear).is_err());
        Ok(())
    }
}
