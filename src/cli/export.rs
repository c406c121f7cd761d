//! `cai export`: stage outputs as TRL / OpenRLHF training sets.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use clap::Args;

use super::args::{choice, set};
use super::help_defaults::Source;
use crate::config_file::read_or_default;
use crate::export::{self, ExportConfig, ExportKind, Style};

/// The flags of `cai export`.
#[derive(Debug, Args)]
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
    #[arg(long)]
    pub keep_ties: bool,
}

impl ExportArgs {
    /// Defaults < `--config` < flags.
    pub fn resolve(self) -> Result<ExportConfig> {
        let mut c: ExportConfig = read_or_default(self.config.as_deref())?;
        set(&mut c.input, self.input);
        set(&mut c.out, self.out);
        c.kind = self.kind.or(c.kind);
        set(&mut c.style, self.style);
        c.keep_ties |= self.keep_ties;
        ensure!(
            !c.input.as_os_str().is_empty() && !c.out.as_os_str().is_empty(),
            "cai export needs --input FILE and --out FILE (or `input:` and `out:`)"
        );
        c.kind
            .context("cai export needs --kind messages|prompt-completion|preference")?;
        Ok(c)
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (ExportConfig, Vec<(&'static str, Source)>) {
    (ExportConfig::default(), Vec::new())
}

/// Runs `cai export`.
pub fn run(args: ExportArgs) -> Result<()> {
    let cfg = args.resolve()?;
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
