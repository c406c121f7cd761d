//! `cai sample`: K responses per prompt from a policy, and the pairs among them.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::{set, ModelArgs, SamplingArgs};
use super::help_defaults::Source;
use crate::config_file::read_or_default;
use crate::stages::sample::{self, SampleConfig};

/// The flags of `cai sample`.
#[derive(Debug, Args)]
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
    pub sampling: SamplingArgs,
    /// Best-of-N: sample N responses per prompt (sets --k), score them with
    /// --reward-model and mark the best; writes X.best.jsonl and no pairs.
    #[arg(long, requires = "reward_model")]
    pub best_of: Option<usize>,
    /// Reward model folder (`final/` of `cai train rm`) for --best-of.
    #[arg(long, requires = "best_of")]
    pub reward_model: Option<PathBuf>,
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
    #[arg(long, short)]
    pub quiet: bool,
}

impl SampleArgs {
    /// Defaults < `--config` < flags.
    pub fn resolve(self) -> Result<SampleConfig> {
        let mut c: SampleConfig = read_or_default(self.config.as_deref())?;
        set(&mut c.prompts, self.prompts);
        set(&mut c.out, self.out);
        self.model
            .apply(&mut c.backend, &mut c.model, &mut c.openai);
        set(&mut c.k, self.best_of.or(self.k));
        c.pairs_per_prompt = self.pairs_per_prompt.or(c.pairs_per_prompt);
        c.best_of_rm = self.reward_model.or(c.best_of_rm);
        set(&mut c.sampling.temperature, self.temperature);
        set(&mut c.sampling.top_p, self.top_p);
        set(&mut c.sampling.max_tokens, self.max_tokens);
        self.sampling.apply(&mut c.sampling);
        set(&mut c.seed, self.seed);
        set(&mut c.batch_size, self.batch_size);
        c.limit = self.limit.or(c.limit);
        c.quiet |= self.quiet;
        Ok(c)
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (SampleConfig, Vec<(&'static str, Source)>) {
    (SampleConfig::default(), Vec::new())
}

/// Runs `cai sample` and says what it wrote.
pub fn run(args: SampleArgs) -> Result<()> {
    let cfg = args.resolve()?;
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
