//! Command-line arguments of `cai train rm` and `cai score` (the reward-model stage);
//! doc comments are the `--help`. Resolution into [`TrainRmConfig`](crate::rm::TrainRmConfig)
//! is in [`crate::rm`].

use std::path::PathBuf;

use clap::Args;

use crate::train::reward_data::DataSource;

#[derive(Debug, Args, Default)]
pub struct RmArgs {
    /// YAML file with any TrainRmConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Backbone: `default`, a .gguf file, a model folder (e.g. an SFT checkpoint) or a
    /// Hugging Face id from the local cache [default: default].
    #[arg(long)]
    pub model: Option<String>,
    /// Training pairs: a `cai label` file (soft label p_a) or human pairs (HH-RLHF, TRL,
    /// ours); `FILE:WEIGHT` weights its pairs in the loss. Repeat to mix sources.
    #[arg(long = "data", value_name = "FILE[:WEIGHT]")]
    pub data: Vec<DataSource>,
    /// Held-out labelled pairs (HH-RLHF, TRL, ours) for accuracy, ECE and reward spread.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Without --eval: fraction of the training conversations held out [default: 0.1].
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    /// Round labels to 0/1 (AI hard labels); exact ties are dropped.
    #[arg(long)]
    pub hard: bool,
    /// Output folder: checkpoints, final/, logs, metrics.json, SVG plots [default: runs/rm].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Peak learning rate [default: 1e-5].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Passes over the training pairs [default: 1].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Pairs per micro-batch (all pairs of a conversation stay together) [default: 8].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Warmup steps [default: 10].
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Sequences are cut to their last N tokens [default: 512].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Token budget of one forward/backward pass: micro-batches larger than this (2 × pairs ×
    /// longest sequence) run in parts, a conversation's pairs kept together, and their
    /// gradients are accumulated for the same update [default: 4096].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// The reward head is always trained; these pick the backbone's trainable part (top
    /// layers also train the final norm).
    #[command(flatten)]
    pub trainable: crate::cli_train::TrainableArgs,
    /// Bradley–Terry margin [default: 0].
    #[arg(long)]
    pub margin: Option<f64>,
    /// Reward-centering coefficient c of c·(r_a + r_b)² [default: 0].
    #[arg(long)]
    pub center_coef: Option<f64>,
    /// Held-out evaluation every N steps (and at the end) [default: 50].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps [default: 200].
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Seed of data order, head and LoRA initialisation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Reward model folder written by `cai train rm` (final/ or a checkpoint).
    #[arg(long)]
    pub rm: PathBuf,
    /// Rows to score: pairs (ours, HH-RLHF, TRL) → r_a, r_b, p_a; or single responses
    /// `{prompt|conversation, response}` → reward.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Output JSONL, one row per input row.
    #[arg(long)]
    pub out: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Sequences are cut to their last N tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
}
