//! Command-line interface of `cai train`: one subcommand per training stage (SFT now; the
//! reward model and PPO join as `rm` and `ppo`). Doc comments are the `--help`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::sft_data::RoundChoice;
use crate::train::ScheduleKind;

/// `cai train <stage>`.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning on critique → revision data (SL-CAI) or TRL SFT rows.
    Sft(SftArgs),
    /// Reward model on AI and/or human preference labels, evaluated on held-out human labels.
    Rm(crate::cli_rm::RmArgs),
    /// PPO of the SFT policy against the reward model, with a KL penalty to the SFT model.
    Ppo(PpoArgs),
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
    /// Seed of the data order, the eval split and LoRA initialisation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// What is trained [default: all].
    #[arg(long, value_enum)]
    pub trainable: Option<TrainableKind>,
    /// Train only the last N blocks (implies --trainable top-layers).
    #[arg(long)]
    pub top_layers: Option<usize>,
    /// LoRA rank (implies --trainable lora) [default: 8].
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha / rank [default: 16].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA target modules, comma separated, or `all` [default: q_proj,v_proj].
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_schedule(s: &str) -> Result<ScheduleKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown schedule `{s}` (cosine, linear or constant)"))
}

/// `cai train ppo`: the flags most runs change; every other setting (clip ranges, GAE,
/// whitening, PPO-ptx, guards…) lives in the `--config` YAML (`PpoRunConfig`, PPO settings
/// under `ppo:`).
#[derive(Debug, Args)]
pub struct PpoArgs {
    /// YAML file with any PpoRunConfig fields; flags override it.
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
    /// Train only the last N blocks [default: 2].
    #[arg(long, conflicts_with = "lora_rank")]
    pub top_layers: Option<usize>,
    /// Train LoRA adapters of this rank (alpha = 2·rank, targets q_proj,v_proj).
    #[arg(long)]
    pub lora_rank: Option<usize>,
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
