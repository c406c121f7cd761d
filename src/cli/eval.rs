//! `cai eval`: two policies answer held-out prompts; the AI labeler and the reward model judge.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::args::{each, model_to, sampling_to, ModelArgs, SamplingArgs};
use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::artifacts::REPORT;
use crate::stages::eval::{self, EvalConfig};

/// The flags of `cai eval`.
#[derive(Debug, Args, Serialize)]
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
    #[serde(flatten)]
    pub model: ModelArgs,
    /// New tokens per answer.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature of the answers.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampling options of the answers.
    #[command(flatten)]
    #[serde(flatten)]
    pub sampling: SamplingArgs,
    /// Seed of the answers and the labeler.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A label within ±DELTA of 0.5 is a tie (½), not a win; the tie share is reported next
    /// to the win rate.
    #[arg(long, value_name = "DELTA")]
    pub tie_margin: Option<f64>,
    /// No progress bars.
    #[arg(long, short, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Show the progress bar (undoes `quiet: true` in --config).
    #[arg(long, overrides_with = "quiet")]
    pub no_quiet: bool,
}

impl Flags for EvalArgs {
    type Config = EvalConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// The model flags are the feedback model's (`labeler:`); `--seed` seeds both the
    /// policies' sampling and the labeler.
    fn to(id: &str) -> Option<To> {
        match id {
            "constitution" => Some(To::key("labeler.constitution")),
            "seed" => Some(each(&["", "labeler."], "seed")),
            "max_tokens" | "temperature" => Some(To::key(format!("sampling.{id}"))),
            _ => model_to("labeler.", id).or_else(|| sampling_to(&["sampling."], id)),
        }
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
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<EvalArgs>(m)?;
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
