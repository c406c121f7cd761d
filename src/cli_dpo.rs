//! Command-line arguments of `cai train dpo`; doc comments are the `--help`. Resolution into
//! [`TrainDpoConfig`](crate::dpo_run::TrainDpoConfig) is in [`crate::dpo_run`].

use std::path::PathBuf;

use clap::Args;

use crate::train::dpo_loss::DpoLoss;
use crate::train::reward_data::DataSource;

/// The flags of `cai train dpo`; its `--help` text (data handling: ties, identical pairs) is
/// on [`TrainCommand::Dpo`](crate::cli_train::TrainCommand::Dpo).
#[derive(Debug, Args, Default)]
pub struct DpoArgs {
    /// YAML file with any TrainDpoConfig fields (optimizer settings under `train:`); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Starting policy: `default`, a .gguf file, a model folder (e.g. runs/sft/final) or a
    /// Hugging Face id from the local cache [default: default].
    #[arg(long)]
    pub model: Option<String>,
    /// Frozen reference model [default: the starting policy]. Its log-probabilities of every
    /// pair are computed once and kept in OUT/reference_logps.json, which a resumed or
    /// repeated run reuses.
    #[arg(long)]
    pub reference: Option<String>,
    /// Training pairs: `cai label` output, human pairs or `cai revise` output;
    /// `FILE:WEIGHT` weights its pairs. Repeat to mix sources.
    #[arg(long = "data", value_name = "FILE[:WEIGHT]")]
    pub data: Vec<DataSource>,
    /// Held-out pairs (normally human: HH-RLHF, TRL, ours) for implicit-reward accuracy,
    /// margins and log-prob drift.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Without --eval: fraction of the training conversations held out [default: 0.1].
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    /// Output folder: reference_logps.json, checkpoint-N/, final/ (usable as --model),
    /// train_log.csv, eval_log.csv, metrics.json, manifest.json, SVG plots
    /// [default: runs/dpo].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Loss: sigmoid (DPO, label rounded), cdpo (soft label as the target), robust (rDPO,
    /// the label's uncertainty as flip rate), ipo (soft target on per-token log-ratios),
    /// hinge (SLiC) [default: sigmoid].
    #[arg(long, value_parser = parse_loss)]
    pub loss: Option<DpoLoss>,
    /// β of the implicit reward β·log(π/π_ref) [default: 0.1].
    #[arg(long)]
    pub beta: Option<f64>,
    /// Label smoothing ε: cdpo's target ε + (1 − 2ε)·p, robust's least flip rate
    /// [default: 0].
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Peak learning rate [default: 5e-6].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Passes over the training pairs [default: 1].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Pairs per micro-batch (all pairs of a conversation stay together) [default: 4].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 2].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Warmup steps [default: 10].
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Tokens per sequence: longer ones lose the start of the conversation, then the end of
    /// the response [default: 512].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Token budget of one forward/backward pass: micro-batches larger than this (2 × pairs
    /// × longest sequence) run in parts whose gradients are accumulated, for the same
    /// update [default: 4096].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    #[command(flatten)]
    pub trainable: crate::cli_train::TrainableArgs,
    /// Held-out evaluation every N steps (and before the first and after the last)
    /// [default: 25].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps [default: 100].
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Seed of data order and LoRA initialisation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_loss(s: &str) -> Result<DpoLoss, String> {
    s.parse()
}
