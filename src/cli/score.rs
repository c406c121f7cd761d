//! `cai score`: rewards of pairs or single responses from a trained reward model.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::stages::rm::score::{self, ScoreConfig};

/// The flags of `cai score`.
#[derive(Debug, Args, Serialize)]
pub struct ScoreArgs {
    /// YAML file with any ScoreConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Reward model folder written by `cai train rm` (final/ or a checkpoint); `--rm` is the
    /// old spelling.
    #[arg(long, alias = "rm")]
    pub reward_model: Option<PathBuf>,
    /// Rows to score: pairs (ours, HH-RLHF, TRL) → r_a, r_b, p_a; or single responses
    /// `{prompt|conversation, response}` → reward.
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Output JSONL, one row per input row.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sequences per forward pass.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Sequences are cut to their last N tokens.
    #[arg(long)]
    pub max_len: Option<usize>,
}

impl Flags for ScoreArgs {
    type Config = ScoreConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn to(_id: &str) -> Option<To> {
        None
    }

    fn finish(&self, c: &mut ScoreConfig) -> Result<()> {
        for (value, what) in [
            (&c.reward_model, "--reward-model DIR (or `reward_model:`)"),
            (&c.pairs, "--pairs FILE (or `pairs:`)"),
            (&c.out, "--out FILE (or `out:`)"),
        ] {
            ensure!(!value.as_os_str().is_empty(), "cai score needs {what}");
        }
        Ok(())
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (ScoreConfig, Vec<(&'static str, Source)>) {
    (ScoreConfig::default(), Vec::new())
}

/// Runs `cai score`.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<ScoreArgs>(m)?;
    let s = score::run(&cfg)?;
    eprintln!("cai: score: {} rows -> {}", s.rows, cfg.out.display());
    if let Some(acc) = s.accuracy {
        println!("accuracy against human labels: {acc:.4}");
    }
    Ok(())
}
