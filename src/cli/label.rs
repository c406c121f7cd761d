//! `cai label`: AI preference labels of response pairs.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::args::{choice, model_to, parse_range, sampling_to, ModelArgs, SamplingArgs};
use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::stages::label::{self, LabelConfig, LabelMode};

/// The flags of `cai label`.
#[derive(Debug, Args, Serialize)]
pub struct LabelArgs {
    /// YAML file with any LabelConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Constitution YAML (comparison principles, few-shot comparisons), or a built-in name:
    /// harmless, helpful-honest (an existing file of that path wins).
    #[arg(long)]
    pub constitution: Option<PathBuf>,
    /// Pairs: our JSONL (prompt|conversation, response_a, response_b), HH-RLHF or TRL rows.
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Output JSONL; an earlier run's output (with its X.manifest.json) is resumed, any other
    /// existing file or a symbolic link is refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of principle sampling and CoT sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    /// Folder with template overrides (feedback.txt, feedback_cot.txt).
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Old spelling of `--mode cot`.
    #[arg(long, hide = true)]
    pub cot: bool,
    /// How the feedback model is asked (`cot` is chain-of-thought with self-consistency).
    #[arg(long, value_parser = choice::<LabelMode>())]
    pub mode: Option<LabelMode>,
    /// Comparison principles sampled per pair and averaged (ensemble); at most the number of
    /// comparison principles in the constitution.
    #[arg(long)]
    pub principles: Option<usize>,
    /// Ask with response_a in slot (A) and in slot (B), averaged (the default; undoes
    /// `both_orders: false` in --config).
    #[arg(long, overrides_with = "no_both_orders")]
    pub both_orders: bool,
    /// Ask only with response_a in slot (A).
    #[arg(long, visible_alias = "one-order", overrides_with = "both_orders")]
    pub no_both_orders: bool,
    /// Calibrate the option probabilities (direct mode's default; undoes `calibrate: false`
    /// in --config).
    #[arg(long, overrides_with = "no_calibrate")]
    pub calibrate: bool,
    /// Do not calibrate: raw option probabilities.
    #[arg(long, overrides_with = "calibrate")]
    pub no_calibrate: bool,
    /// Few-shot comparison examples.
    #[arg(long)]
    pub few_shot: Option<usize>,
    /// CoT reasoning samples (self-consistency).
    #[arg(long)]
    pub samples: Option<usize>,
    /// CoT sampling temperature.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampling options of the CoT reasoning.
    #[command(flatten)]
    #[serde(flatten)]
    pub sampling: SamplingArgs,
    /// Clamp per-sample probabilities to LO,HI (default 0.4,0.6 for CoT, none for direct).
    #[arg(long, value_parser = parse_range)]
    pub clamp: Option<(f64, f64)>,
    /// Longest accepted question in tokens.
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// Drop the oldest turns of long conversations instead of skipping them (the row keeps
    /// the original conversation and says `truncated: true`).
    #[arg(long, overrides_with = "no_truncate_long")]
    pub truncate_long: bool,
    /// Skip long conversations (undoes `truncate_long: true` in --config).
    #[arg(long, overrides_with = "truncate_long")]
    pub no_truncate_long: bool,
    /// Pairs sent to the backend together.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Only the first N pairs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// No progress bar.
    #[arg(long, short, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Show the progress bar (undoes `quiet: true` in --config).
    #[arg(long, overrides_with = "quiet")]
    pub no_quiet: bool,
}

impl Flags for LabelArgs {
    type Config = LabelConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// `--temperature` and the sampling options are the CoT reasoning's; `--cot` is the old
    /// spelling of `--mode cot`.
    fn to(id: &str) -> Option<To> {
        match id {
            "temperature" => Some(To::key("reasoning.temperature")),
            "cot" => Some(To::Mapped("mode".into(), |_| "cot".into())),
            _ => model_to("", id).or_else(|| sampling_to(&["reasoning."], id)),
        }
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (LabelConfig, Vec<(&'static str, Source)>) {
    (LabelConfig::default(), Vec::new())
}

/// Raw and written slot (A) rates and order agreement of this run's labels, side by side.
fn slot_rates(cfg: &LabelConfig, s: &label::LabelStats) -> Option<String> {
    let pct = |x: Option<f64>| x.map_or("–".into(), |x| format!("{:.1} %", 100.0 * x));
    let written = cfg.adjustment();
    let raw = s.slot_a_rate_raw?;
    let mut line = format!(
        "slot (A) chosen in {} raw, {} {written} of {} per-order answers",
        pct(Some(raw)),
        pct(s.slot_a_rate),
        s.slot_answers
    );
    if s.order_consistency_raw.is_some() {
        line.push_str(&format!(
            "; both orders prefer the same response in {} raw, {} {written}",
            pct(s.order_consistency_raw),
            pct(s.order_consistency)
        ));
    }
    Some(line)
}

/// Runs `cai label`.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<LabelArgs>(m)?;
    let s = label::run(&cfg)?;
    eprintln!(
        "cai: label: {} written, {} already done, {} skipped (too long), {} truncated, {} \
         identical, {} ties (p_a exactly 0.5) -> {}",
        s.written,
        s.resumed,
        s.skipped_long,
        s.truncated,
        s.identical,
        s.ties,
        cfg.out.display()
    );
    if let Some(line) = slot_rates(&cfg, &s) {
        eprintln!("cai: label: {line}");
    }
    if s.written > 0 {
        eprintln!(
            "cai: label: {:.3} pairs/s",
            s.written as f64 / s.seconds.max(1e-9)
        );
    }
    Ok(())
}
