//! Command-line arguments of `cai export` (kept apart from `cli.rs` so stages grow in parallel).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::export::{self, ExportConfig, ExportKind, Style};

/// Stage outputs as TRL / OpenRLHF training sets.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// `cai revise` output (messages, prompt-completion) or `cai label` output (preference).
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL.
    #[arg(long)]
    pub out: PathBuf,
    /// Which set to write.
    #[arg(long, value_enum)]
    pub kind: ExportKind,
    /// Role-tagged messages (conversational) or plain text (standard).
    #[arg(long, value_enum, default_value_t = Style::Conversational)]
    pub style: Style,
}

/// Runs `cai export`.
pub fn run(a: ExportArgs) -> Result<()> {
    let cfg = ExportConfig {
        input: a.input,
        out: a.out,
        kind: a.kind,
        style: a.style,
    };
    let n = export::run(&cfg)?;
    eprintln!("cai: export: {n} rows -> {}", cfg.out.display());
    Ok(())
}
