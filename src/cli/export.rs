//! `cai export`: stage outputs as TRL / OpenRLHF training sets.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::args::choice;
use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::export::{self, ExportConfig, ExportKind, Style};

/// The flags of `cai export`.
#[derive(Debug, Args, Serialize)]
pub struct ExportArgs {
    /// YAML file with any ExportConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `cai revise` output (messages, prompt-completion) or `cai label` output (preference).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output JSONL.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Which set to write.
    #[arg(long, value_parser = choice::<ExportKind>())]
    pub kind: Option<ExportKind>,
    /// Role-tagged messages (conversational) or plain text (standard).
    #[arg(long, value_parser = choice::<Style>())]
    pub style: Option<Style>,
    /// Preference sets: also write ties (p_a = 0.5 exactly) with p_chosen 0.5 and response A as
    /// "chosen" by position only; by default they are skipped and counted.
    #[arg(long, overrides_with = "no_keep_ties")]
    pub keep_ties: bool,
    /// Skip ties (undoes `keep_ties: true` in --config).
    #[arg(long, overrides_with = "keep_ties")]
    pub no_keep_ties: bool,
}

impl Flags for ExportArgs {
    type Config = ExportConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn to(_id: &str) -> Option<To> {
        None
    }

    fn finish(&self, c: &mut ExportConfig) -> Result<()> {
        ensure!(
            !c.input.as_os_str().is_empty() && !c.out.as_os_str().is_empty(),
            "cai export needs --input FILE and --out FILE (or `input:` and `out:`)"
        );
        c.kind
            .context("cai export needs --kind messages|prompt-completion|preference")?;
        Ok(())
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (ExportConfig, Vec<(&'static str, Source)>) {
    (ExportConfig::default(), Vec::new())
}

/// Runs `cai export`.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<ExportArgs>(m)?;
    let s = export::run(&cfg)?;
    let ties = match (s.ties_skipped, s.ties_kept) {
        (0, 0) => String::new(),
        (0, kept) => format!(" ({kept} ties kept with p_chosen 0.5)"),
        (skipped, _) => format!(" ({skipped} ties, p_a = 0.5, skipped; --keep-ties writes them)"),
    };
    eprintln!(
        "cai: export: {} rows -> {}{ties}",
        s.written,
        cfg.out.display()
    );
    Ok(())
}
