//! `cai perplexity`: a model's perplexity on a text, as llama.cpp's llama-perplexity computes it.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::perplexity::{self, PerplexityConfig};

/// The flags of `cai perplexity`.
#[derive(Debug, Args, Serialize)]
pub struct PerplexityArgs {
    /// YAML file with any PerplexityConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `default` (embedded SmolLM2-135M-Instruct), a .gguf file or a model folder.
    #[arg(long)]
    pub model: Option<String>,
    /// Text to score (UTF-8).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Score at most this many chunks (llama-perplexity's --chunks); all by default.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// No progress bar.
    #[arg(long, short, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Show the progress bar (undoes `quiet: true` in --config).
    #[arg(long, overrides_with = "quiet")]
    pub no_quiet: bool,
}

impl Flags for PerplexityArgs {
    type Config = PerplexityConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn to(_id: &str) -> Option<To> {
        None
    }

    fn finish(&self, c: &mut PerplexityConfig) -> Result<()> {
        ensure!(
            !c.file.as_os_str().is_empty(),
            "no text to score: give --file TEXT (or `file:` in the config)"
        );
        Ok(())
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (PerplexityConfig, Vec<(&'static str, Source)>) {
    (PerplexityConfig::default(), Vec::new())
}

/// Runs `cai perplexity`: the running PPL per chunk, then `PPL = X +/- E`.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<PerplexityArgs>(m)?;
    let r = perplexity::run(&cfg)?;
    let chunks: Vec<String> = r
        .per_chunk
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[{}]{p:.4}", i + 1))
        .collect();
    println!("{}", chunks.join(","));
    println!(
        "{} tokens, {} chunks of {}, {} scored",
        r.tokens, r.chunks, r.ctx, r.sums.count
    );
    println!("{}", r.final_line());
    Ok(())
}
