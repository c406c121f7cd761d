//! `cai sample`: K responses per prompt from a policy, and the pairs among them.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::args::{model_to, sampling_to, ModelArgs, SamplingArgs};
use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::stages::sample::{self, SampleConfig};

/// The flags of `cai sample`.
#[derive(Debug, Args, Serialize)]
pub struct SampleArgs {
    /// YAML file with any SampleConfig fields (sampling settings under `sampling:`); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Prompts: JSONL (`prompt`, `messages`, HH-RLHF rows) or text, one per line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Output JSONL (one record per prompt); the pairs go to X.pairs.jsonl. An earlier run's
    /// output (with its X.manifest.json) is resumed, any other existing file is refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    /// Responses per prompt.
    #[arg(long)]
    pub k: Option<usize>,
    /// Pairs kept per prompt (drawn at random; all K(K-1)/2 when not set).
    #[arg(long)]
    pub pairs_per_prompt: Option<usize>,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// New tokens per response.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub sampling: SamplingArgs,
    /// Best-of-N: sample N responses per prompt (sets --k), score them with
    /// --reward-model and mark the best; writes X.best.jsonl and no pairs.
    #[arg(long, requires = "best_of_rm")]
    pub best_of: Option<usize>,
    /// Reward model folder (`final/` of `cai train rm`) for --best-of.
    #[arg(
        long = "reward-model",
        requires = "best_of",
        visible_alias = "best-of-rm"
    )]
    pub best_of_rm: Option<PathBuf>,
    /// Seed of the sampling and of the pairs kept.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prompts sampled together.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// No progress bar.
    #[arg(long, short, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Show the progress bar (undoes `quiet: true` in --config).
    #[arg(long, overrides_with = "quiet")]
    pub no_quiet: bool,
}

impl Flags for SampleArgs {
    type Config = SampleConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn to(id: &str) -> Option<To> {
        match id {
            "best_of" => Some(To::key("k")),
            "temperature" | "top_p" | "max_tokens" => Some(To::key(format!("sampling.{id}"))),
            _ => model_to("", id).or_else(|| sampling_to(&["sampling."], id)),
        }
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (SampleConfig, Vec<(&'static str, Source)>) {
    (SampleConfig::default(), Vec::new())
}

/// Runs `cai sample` and says what it wrote.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<SampleArgs>(m)?;
    let s = sample::run(&cfg)?;
    let extra = match (cfg.best_of_rm.is_some(), cfg.k >= 2) {
        (true, _) => format!(
            " (best responses: {})",
            cfg.out.with_extension("best.jsonl").display()
        ),
        (false, true) => format!(
            " (pairs: {})",
            cfg.out.with_extension("pairs.jsonl").display()
        ),
        (false, false) => String::new(),
    };
    eprintln!(
        "cai: sample: {} written, {} already done, {} skipped -> {}{extra}",
        s.written,
        s.resumed,
        s.skipped_long,
        cfg.out.display(),
    );
    Ok(())
}
