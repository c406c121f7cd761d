//! `cai revise`: critique → revision loops on red-team prompts.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::args::{choice, each, model_to, sampling_to, ModelArgs, SamplingArgs};
use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::stages::revise::{self, LongPrompt, ReviseConfig, SftFormat};

/// The flags of `cai revise`.
#[derive(Debug, Args, Serialize)]
pub struct ReviseArgs {
    /// YAML file with any ReviseConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Constitution YAML, or a built-in name: harmless, helpful-honest (an existing file wins).
    #[arg(long)]
    pub constitution: Option<PathBuf>,
    /// Red-team prompts: JSONL (`prompt`, `messages` or HH-RLHF rows) or text, one per line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Output JSONL; an earlier run's output (with its X.manifest.json) is resumed, any other
    /// existing file or a symbolic link is refused.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Critique → revision rounds per prompt.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seed for principle sampling and text sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    /// Folder with template overrides (initial.txt, critique.txt, revision.txt).
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Prompts processed together.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Few-shot revision examples from the constitution per request.
    #[arg(long)]
    pub few_shot: Option<usize>,
    /// Longest accepted prompt in tokens.
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// What to do with longer prompts.
    #[arg(long, value_parser = choice::<LongPrompt>())]
    pub on_long_prompt: Option<LongPrompt>,
    /// Sampling temperature of all steps (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Maximum new tokens of every step.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling options of all steps.
    #[command(flatten)]
    #[serde(flatten)]
    pub sampling: SamplingArgs,
    /// Also write X.trl.jsonl (TRL conversational `messages` rows).
    #[arg(long = "format", value_parser = choice::<SftFormat>())]
    pub formats: Vec<SftFormat>,
    /// No progress bar.
    #[arg(long, short, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Show the progress bar (undoes `quiet: true` in --config).
    #[arg(long, overrides_with = "quiet")]
    pub no_quiet: bool,
}

impl Flags for ReviseArgs {
    type Config = ReviseConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// `--temperature`, `--max-tokens` and the sampling options apply to all three steps.
    fn to(id: &str) -> Option<To> {
        const STEPS: &[&str] = &["answer.", "critique.", "revision."];
        match id {
            "temperature" | "max_tokens" => Some(each(STEPS, id)),
            _ => model_to("", id).or_else(|| sampling_to(STEPS, id)),
        }
    }
}

/// Defaults for `--help`: the config's, and the text for `--max-tokens` (one per step).
pub fn help_defaults() -> (ReviseConfig, Vec<(&'static str, Source)>) {
    let d = ReviseConfig::default();
    let max_tokens = format!(
        "answer {}, critique {}, revision {}",
        d.answer.max_tokens, d.critique.max_tokens, d.revision.max_tokens
    );
    (d, vec![("max_tokens", Source::Text(max_tokens))])
}

/// Runs `cai revise`.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<ReviseArgs>(m)?;
    let s = revise::run(&cfg)?;
    eprintln!(
        "cai: revise: {} written, {} already done, {} skipped (too long), {} truncated -> {}",
        s.written,
        s.resumed,
        s.skipped_long,
        s.truncated,
        cfg.out.display()
    );
    if s.written > 0 {
        eprintln!(
            "cai: revise: {:.1} prompts/min, {:.1} generated tokens/s",
            s.written as f64 * 60.0 / s.seconds.max(1e-9),
            s.generated_tokens as f64 / s.seconds.max(1e-9)
        );
    }
    Ok(())
}
