//! `cai perplexity`: a model's perplexity on a text, as llama.cpp's llama-perplexity computes it.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::Args;

use super::args::set;
use super::help_defaults::Source;
use crate::config_file::read_or_default;
use crate::perplexity::{self, PerplexityConfig};

/// The flags of `cai perplexity`.
#[derive(Debug, Args)]
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
    #[arg(long, short)]
    pub quiet: bool,
}

impl PerplexityArgs {
    /// Defaults < `--config` < flags.
    pub fn resolve(self) -> Result<PerplexityConfig> {
        let mut c: PerplexityConfig = read_or_default(self.config.as_deref())?;
        set(&mut c.model, self.model);
        set(&mut c.file, self.file);
        set(&mut c.ctx, self.ctx);
        c.chunks = self.chunks.or(c.chunks);
        c.quiet |= self.quiet;
        ensure!(
            !c.file.as_os_str().is_empty(),
            "no text to score: give --file TEXT (or `file:` in the config)"
        );
        Ok(c)
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (PerplexityConfig, Vec<(&'static str, Source)>) {
    (PerplexityConfig::default(), Vec::new())
}

/// Runs `cai perplexity`: the running PPL per chunk, then `PPL = X +/- E`.
pub fn run(args: PerplexityArgs) -> Result<()> {
    let cfg = args.resolve()?;
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
