//! `cai label`: AI preference labels of response pairs.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::{choice, parse_range, set, ModelArgs, SamplingArgs};
use super::help_defaults::Source;
use crate::config_file::read_or_default;
use crate::stages::label::{self, LabelConfig, LabelMode};

/// The flags of `cai label`.
#[derive(Debug, Args)]
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
    /// Ask only with response_a in slot (A) (default: both orders, averaged).
    #[arg(long)]
    pub one_order: bool,
    /// Do not calibrate: raw option probabilities (direct mode calibrates by default).
    #[arg(long)]
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
    pub sampling: SamplingArgs,
    /// Clamp per-sample probabilities to LO,HI (default 0.4,0.6 for CoT, none for direct).
    #[arg(long, value_parser = parse_range)]
    pub clamp: Option<(f64, f64)>,
    /// Longest accepted question in tokens.
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// Drop the oldest turns of long conversations instead of skipping them (the row keeps
    /// the original conversation and says `truncated: true`).
    #[arg(long)]
    pub truncate_long: bool,
    /// Pairs sent to the backend together.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Only the first N pairs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

impl LabelArgs {
    /// Defaults < `--config` < flags.
    pub fn resolve(self) -> Result<LabelConfig> {
        let mut c: LabelConfig = read_or_default(self.config.as_deref())?;
        set(&mut c.constitution, self.constitution);
        set(&mut c.pairs, self.pairs);
        set(&mut c.out, self.out);
        set(&mut c.seed, self.seed);
        self.model
            .apply(&mut c.backend, &mut c.model, &mut c.openai);
        c.templates = self.templates.or(c.templates);
        set(&mut c.mode, self.mode);
        if self.cot {
            c.mode = LabelMode::Cot;
        }
        set(&mut c.principles, self.principles);
        if self.one_order {
            c.both_orders = false;
        }
        c.calibrate &= !self.no_calibrate;
        set(&mut c.few_shot, self.few_shot);
        set(&mut c.samples, self.samples);
        set(&mut c.reasoning.temperature, self.temperature);
        self.sampling.apply(&mut c.reasoning);
        c.clamp = self.clamp.or(c.clamp);
        set(&mut c.max_prompt_tokens, self.max_prompt_tokens);
        c.truncate_long |= self.truncate_long;
        set(&mut c.batch_size, self.batch_size);
        c.limit = self.limit.or(c.limit);
        c.quiet |= self.quiet;
        Ok(c)
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
pub fn run(args: LabelArgs) -> Result<()> {
    let cfg = args.resolve()?;
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
