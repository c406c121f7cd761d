//! `<run>/report.md`: the constitution and its hash, stage timings, and one section per stage
//! (revise examples, SFT and reward-model curves, label agreement with human labels). Every
//! number is read from a file in the run folder and cites it; links are relative to the run
//! folder, so the report opens with its plots from there.

mod cells;
mod rl;
mod sections;

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::config::PipelineConfig;
use super::stage::{RunDir, Stage};
use super::state::{self, Done, StageStatus};
use crate::constitution::Loaded;
use cells::{cell, short, utc};

/// Writes `report.md` from what the run folder holds now.
pub fn write(cfg: &PipelineConfig, run: &RunDir, statuses: &[(Stage, StageStatus)]) -> Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# Constitutional AI run: `{}`\n", run.root.display());
    let _ = writeln!(
        md,
        "Resolved config: [pipeline.yaml](pipeline.yaml) · cai {} · written {}.\n\n\
         Every number below names the file of this folder it comes from.\n",
        env!("CARGO_PKG_VERSION"),
        utc(crate::manifest::now_unix())
    );
    stages_table(&mut md, cfg, run, statuses);
    constitution(&mut md, cfg, run);
    // One section per stage of this config, in run order.
    for stage in cfg.enabled() {
        match stage {
            Stage::Revise => sections::revise(&mut md, run),
            Stage::Sft => sections::sft(&mut md, run),
            Stage::Sample => sections::sample(&mut md, run),
            Stage::Label => sections::label(&mut md, run),
            Stage::Rm => sections::rm(&mut md, run),
            Stage::Dpo => rl::dpo(&mut md, run),
            Stage::Ppo | Stage::Grpo => rl::rl(&mut md, run, stage),
            Stage::Eval => rl::eval(&mut md, run),
        }
    }
    let path = run.report();
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))
}

fn stages_table(
    md: &mut String,
    cfg: &PipelineConfig,
    run: &RunDir,
    statuses: &[(Stage, StageStatus)],
) {
    md.push_str(
        "## Stages\n\n| stage | state | this invocation | seconds | finished (UTC) | source |\n\
         |---|---|---|---:|---|---|\n",
    );
    let mut total = 0.0;
    for stage in Stage::ALL {
        let now = statuses.iter().find(|(s, _)| *s == stage).map(|(_, st)| st);
        let invocation = match now {
            Some(StageStatus::UpToDate) => "up to date, skipped".to_string(),
            Some(StageStatus::Ran { resumed: true, .. }) => "ran (resumed)".into(),
            Some(StageStatus::Ran { .. }) => "ran".into(),
            Some(StageStatus::NotSelected) => "not selected".into(),
            Some(StageStatus::Failed) => "**failed**".into(),
            None if cfg.has(stage) => "not reached".into(),
            None => "not enabled".into(),
        };
        let done: Option<Done> = state::read(&run.done_file(stage));
        let file = format!("stages/{stage}.done.json");
        match (&done, cfg.has(stage)) {
            (Some(d), _) => {
                total += d.seconds;
                let _ = writeln!(
                    md,
                    "| {stage} | done{} | {invocation} | {:.1} | {} | [{file}]({file}) |",
                    if d.resumed { " (resumed)" } else { "" },
                    d.seconds,
                    utc(d.finished_unix)
                );
            }
            (None, true) => {
                let _ = writeln!(md, "| {stage} | not done | {invocation} | | | |");
            }
            (None, false) => {
                let _ = writeln!(md, "| {stage} | – | {invocation} | | | |");
            }
        }
    }
    let _ = writeln!(
        md,
        "\nTotal of the stages' last runs: {total:.1} s (sum of `seconds` in `stages/*.done.json`).\n"
    );
}

fn constitution(md: &mut String, cfg: &PipelineConfig, run: &RunDir) {
    md.push_str("## Constitution\n\n");
    let copy = run.constitution();
    let Ok(loaded) = Loaded::read(&copy) else {
        md.push_str("No constitution in the run folder (neither revise nor label is enabled).\n\n");
        return;
    };
    let c = &loaded.constitution;
    let _ = writeln!(
        md,
        "`{}` — {} v{}, sha256 `{}` (copy: [constitution.yaml](constitution.yaml)); {} \
         critique/revision principles, {} comparison principles.\n",
        cfg.constitution.display(),
        c.name,
        c.version,
        loaded.sha256,
        c.principles.len(),
        c.comparison_principles.len()
    );
    md.push_str("| principle | weight | critique request |\n|---|---:|---|\n");
    for p in &c.principles {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} |",
            p.id,
            p.weight.unwrap_or(1.0),
            cell(&short(&p.critique, 160))
        );
    }
    md.push('\n');
}
