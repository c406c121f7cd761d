//! `cai bench`: speed of the local backend, and of llama.cpp when installed, in one run.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::set;
use super::help_defaults::Source;
use crate::bench::{self, BenchConfig};
use crate::config_file::read_or_default;

/// The flags of `cai bench`.
#[derive(Debug, Args)]
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
    #[arg(long)]
    pub quantized_only: bool,
    /// Folder with llama.cpp's llama-bench and llama-batched-bench (by default
    /// ~/.cache/cai-peer/llama.cpp/build/bin; docs/performance.md says how to build it).
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl BenchArgs {
    /// Defaults < `--config` < flags.
    pub fn resolve(self) -> Result<BenchConfig> {
        let mut c: BenchConfig = read_or_default(self.config.as_deref())?;
        set(&mut c.model, self.model);
        set(&mut c.prompt_tokens, self.prompt_tokens);
        set(&mut c.gen_tokens, self.gen_tokens);
        set(&mut c.repeats, self.repeats);
        set(&mut c.batches, self.batches);
        set(&mut c.pairs, self.pairs);
        set(&mut c.label_pairs, self.label_pairs);
        set(&mut c.train_steps, self.train_steps);
        c.compare_quantized |= self.quantized_only;
        c.peer_bin = self.peer_bin.or(c.peer_bin);
        c.json = self.json.or(c.json);
        Ok(c)
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (BenchConfig, Vec<(&'static str, Source)>) {
    (BenchConfig::default(), Vec::new())
}

/// Runs `cai bench` and prints its table.
pub fn run(args: BenchArgs) -> Result<()> {
    let cfg = args.resolve()?;
    print!("{}", bench::render(&bench::run(&cfg)?));
    Ok(())
}
