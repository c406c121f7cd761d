//! `cai bench`: speed of the local backend, and of llama.cpp when installed, in one run.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::bench::{self, BenchConfig};

/// The flags of `cai bench`.
#[derive(Debug, Args, Serialize)]
pub struct BenchArgs {
    /// YAML file with any BenchConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model to measure (a GGUF file or `default`).
    #[arg(long)]
    pub model: Option<String>,
    /// Prompt length of the prompt-processing test.
    #[arg(long)]
    pub prompt_tokens: Option<usize>,
    /// Tokens generated in the generation test.
    #[arg(long)]
    pub gen_tokens: Option<usize>,
    /// Repetitions (the best is kept).
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Concurrent sequences of the batched generation tests.
    #[arg(long, value_delimiter = ',')]
    pub batches: Option<Vec<usize>>,
    /// Preference pairs (JSONL) for the labelling test.
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Pairs labelled (both orders each) with and without prefix reuse; 0 skips.
    #[arg(long)]
    pub label_pairs: Option<usize>,
    /// Training steps measured (batch 2 x 128 tokens, full fine-tuning); 0 skips.
    #[arg(long)]
    pub train_steps: Option<usize>,
    /// Also measure with quantized kernels only (no f32 weight copies).
    #[arg(
        long,
        visible_alias = "quantized-only",
        overrides_with = "no_compare_quantized"
    )]
    pub compare_quantized: bool,
    /// Do not (undoes `compare_quantized: true` in --config).
    #[arg(long, overrides_with = "compare_quantized")]
    pub no_compare_quantized: bool,
    /// Folder with llama.cpp's llama-bench and llama-batched-bench (by default
    /// ~/.cache/cai-peer/llama.cpp/build/bin; docs/performance.md says how to build it).
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Flags for BenchArgs {
    type Config = BenchConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn to(_id: &str) -> Option<To> {
        None
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (BenchConfig, Vec<(&'static str, Source)>) {
    (BenchConfig::default(), Vec::new())
}

/// Runs `cai bench` and prints its table.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<BenchArgs>(m)?;
    print!("{}", bench::render(&bench::run(&cfg)?));
    Ok(())
}
