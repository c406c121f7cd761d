//! `cai pipeline`: the whole run in one command, in a run folder, resumable.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::choice;
use crate::pipeline::{self, PipelineOptions, Stage, StageStatus};

/// The flags of `cai pipeline`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Pipeline YAML: shared settings (run_dir, seed, constitution, backend, model,
    /// human_pairs, mix) and one section per stage (revise, sft, sample, label, rm, dpo, ppo,
    /// grpo, eval) with that stage's own config fields; a stage without a section does not
    /// run. See pipelines/.
    #[arg(long)]
    pub config: PathBuf,
    /// Run folder, replacing the file's `run_dir`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// First stage to run; the stages before it must be done in the run folder.
    #[arg(long, value_parser = choice::<Stage>())]
    pub from: Option<Stage>,
    /// Last stage to run.
    #[arg(long, value_parser = choice::<Stage>())]
    pub until: Option<Stage>,
    /// Rerun the selected stages from scratch, even when they are up to date.
    #[arg(long, overrides_with = "no_force")]
    pub force: bool,
    /// Skip up-to-date stages (the default; undoes an earlier --force).
    #[arg(long, overrides_with = "force")]
    pub no_force: bool,
    /// No progress bars (one line per stage is still printed).
    #[arg(long, short, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Progress bars (the default; undoes an earlier --quiet).
    #[arg(long, overrides_with = "quiet")]
    pub no_quiet: bool,
}

/// Runs `cai pipeline` and prints where the report is.
pub fn run(a: PipelineArgs) -> Result<()> {
    let opts = PipelineOptions {
        config: a.config,
        run_dir: a.out,
        from: a.from,
        until: a.until,
        force: a.force,
        quiet: a.quiet,
    };
    let outcome = pipeline::run(&opts)?;
    let ran = outcome
        .stages
        .iter()
        .filter(|(_, s)| matches!(s, StageStatus::Ran { .. }))
        .count();
    let skipped = outcome
        .stages
        .iter()
        .filter(|(_, s)| *s == StageStatus::UpToDate)
        .count();
    eprintln!("cai: pipeline: {ran} stage(s) ran, {skipped} up to date");
    println!("report: {}", outcome.report.display());
    Ok(())
}
