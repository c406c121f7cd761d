//! `cai eval`: two policies answer held-out prompts; the AI labeler and the reward model judge.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::{set, ModelArgs, SamplingArgs};
use super::help_defaults::Source;
use crate::artifacts::REPORT;
use crate::config_file::read_or_default;
use crate::stages::eval::{self, EvalConfig};

/// The flags of `cai eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// YAML file with any EvalConfig fields (labeler settings under `labeler:`); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The policy under test, slot A.
    #[arg(long)]
    pub policy_a: Option<String>,
    /// The baseline, slot B.
    #[arg(long)]
    pub policy_b: Option<String>,
    /// Held-out prompts.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// First N prompts only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Reward model folder (`final/` of `cai train rm`) to score both answers.
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// Constitution of the AI labeler.
    #[arg(long)]
    pub constitution: Option<PathBuf>,
    /// Backend of both policies and the labeler; `--model` is the labeler's model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// New tokens per answer.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature of the answers.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampling options of the answers.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Seed of the answers and the labeler.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A label within ±DELTA of 0.5 is a tie (½), not a win; the tie share is reported next
    /// to the win rate.
    #[arg(long, value_name = "DELTA")]
    pub tie_margin: Option<f64>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

impl EvalArgs {
    /// Defaults < `--config` < flags.
    pub fn resolve(self) -> Result<EvalConfig> {
        let a = self;
        let mut c: EvalConfig = read_or_default(a.config.as_deref())?;
        set(&mut c.policy_a, a.policy_a);
        set(&mut c.policy_b, a.policy_b);
        set(&mut c.prompts, a.prompts);
        c.limit = a.limit.or(c.limit);
        set(&mut c.out, a.out);
        c.reward_model = a.reward_model.or(c.reward_model);
        set(&mut c.labeler.constitution, a.constitution);
        let l = &mut c.labeler;
        a.model.apply(&mut l.backend, &mut l.model, &mut l.openai);
        set(&mut c.sampling.max_tokens, a.max_tokens);
        set(&mut c.sampling.temperature, a.temperature);
        a.sampling.apply(&mut c.sampling);
        if let Some(seed) = a.seed {
            c.seed = seed;
            c.labeler.seed = seed;
        }
        set(&mut c.tie_margin, a.tie_margin);
        c.quiet |= a.quiet;
        Ok(c)
    }
}

/// Defaults for `--help`: the config's (the labeler's settings are under `labeler:`).
pub fn help_defaults() -> (EvalConfig, Vec<(&'static str, Source)>) {
    (
        EvalConfig::default(),
        vec![
            ("max_tokens", Source::Path("sampling.max_tokens")),
            ("temperature", Source::Path("sampling.temperature")),
            ("constitution", Source::Path("labeler.constitution")),
            ("backend", Source::Path("labeler.backend")),
            ("model", Source::Path("labeler.model")),
        ],
    )
}

/// Runs `cai eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let cfg = args.resolve()?;
    let r = eval::run(&cfg)?;
    let w = r.labeler_win_rate;
    eprintln!(
        "cai: eval: {} pairs; A wins {:.1} % [{:.1}, {:.1}] by the AI labeler ({} ties: \
         |P(A) - 0.5| <= {}){} -> {}",
        r.pairs,
        100.0 * w.rate,
        100.0 * w.low,
        100.0 * w.high,
        r.labeler_ties,
        r.tie_margin,
        r.reward_win_rate
            .map(|w| format!(
                ", {:.1} % [{:.1}, {:.1}] by reward",
                100.0 * w.rate,
                100.0 * w.low,
                100.0 * w.high
            ))
            .unwrap_or_default(),
        cfg.out.join(REPORT).display()
    );
    Ok(())
}
