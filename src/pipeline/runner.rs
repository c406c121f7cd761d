//! Runs the planned stages in order: skip what is done and unchanged, resume what an
//! interrupted attempt left, start over where the config or inputs changed, and write the
//! report whatever happened.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::config::PipelineConfig;
use super::plan::{plan, Job, StagePlan};
use super::report;
use super::stage::{RunDir, Stage};
use super::state::{self, Attempt, Done, StageStatus};
use crate::manifest::now_unix;
use crate::model_files::checkpoint::latest_checkpoint;

/// What `cai pipeline` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    pub config: PathBuf,
    /// Replaces the file's `run_dir`.
    pub run_dir: Option<PathBuf>,
    /// First stage to run (earlier ones must be done).
    pub from: Option<Stage>,
    /// Last stage to run.
    pub until: Option<Stage>,
    /// Rerun the selected stages from scratch even when they are done.
    pub force: bool,
    /// No progress bars.
    pub quiet: bool,
}

/// The result of a pipeline invocation.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub report: PathBuf,
    pub stages: Vec<(Stage, StageStatus)>,
}

/// Runs `cai pipeline`.
pub fn run(opts: &PipelineOptions) -> Result<Outcome> {
    let mut cfg = PipelineConfig::read(&opts.config)?;
    if let Some(dir) = &opts.run_dir {
        cfg.run_dir = dir.clone();
    }
    let enabled = cfg.enabled();
    for s in opts.from.iter().chain(&opts.until) {
        if !enabled.contains(s) {
            bail!(
                "stage `{s}` is not enabled in {} (enabled: {})",
                opts.config.display(),
                enabled
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if let (Some(f), Some(u)) = (opts.from, opts.until) {
        anyhow::ensure!(f <= u, "--from {f} comes after --until {u}");
    }
    let run = RunDir::new(&cfg.run_dir);
    let plans = plan(&cfg, &run, opts.quiet)?;
    std::fs::create_dir_all(run.state_dir())
        .with_context(|| format!("cannot create run folder {}", run.root.display()))?;
    let _lock = state::Lock::acquire(&run.state_dir().join("lock"))?;
    write_resolved(&cfg, &run, &plans)?;
    eprintln!("cai: pipeline: run folder {}", run.root.display());

    let mut statuses = Vec::new();
    let result = run_stages(&run, &plans, opts, &mut statuses);
    let report = run.report();
    let written = report::write(&cfg, &run, &statuses);
    result?;
    written.context("writing the run report")?;
    Ok(Outcome {
        run_dir: run.root.clone(),
        report,
        stages: statuses,
    })
}

fn run_stages(
    run: &RunDir,
    plans: &[StagePlan],
    opts: &PipelineOptions,
    statuses: &mut Vec<(Stage, StageStatus)>,
) -> Result<()> {
    let selected = |s: Stage| opts.from.is_none_or(|f| s >= f) && opts.until.is_none_or(|u| s <= u);
    let mut upstream: Vec<String> = Vec::new();
    let n = plans.len();
    for (i, p) in plans.iter().enumerate() {
        let tag = format!("[{}/{n}] {}", i + 1, p.stage);
        let done: Option<Done> = state::read(&run.done_file(p.stage));
        if !selected(p.stage) {
            if let Some(d) = &done {
                upstream.push(d.fingerprint.clone());
            }
            statuses.push((p.stage, StageStatus::NotSelected));
            continue;
        }
        if upstream.len() < i {
            let missing = plans[..i]
                .iter()
                .find(|q| !run.done_file(q.stage).exists())
                .map_or(p.stage, |q| q.stage);
            bail!(
                "stage `{}` needs stage `{missing}` first, but {} is missing: run with \
                 --from {missing} (or without --from)",
                p.stage,
                run.done_file(missing).display()
            );
        }
        let inputs = state::hash_inputs(p)?;
        let fp = state::stage_fingerprint(p, &run.root, &inputs, &upstream)?;
        let intact = match &done {
            Some(d) if d.fingerprint == fp && !opts.force => {
                state::hash_outputs(p)?.is_some_and(|o| o == d.outputs)
            }
            _ => false,
        };
        if intact {
            eprintln!("cai: pipeline: {tag}: up to date, skipped");
            statuses.push((p.stage, StageStatus::UpToDate));
        } else {
            statuses.push((p.stage, StageStatus::Failed));
            let (seconds, resumed) =
                attempt(run, p, &fp, inputs, opts.force, &tag).with_context(|| {
                    format!(
                        "stage `{}` failed; the run folder {} is consistent: run the same \
                         command again to resume",
                        p.stage,
                        run.root.display()
                    )
                })?;
            statuses.last_mut().expect("pushed").1 = StageStatus::Ran { seconds, resumed };
        }
        upstream.push(fp);
    }
    Ok(())
}

/// Runs one stage: resumes an interrupted attempt with the same fingerprint, otherwise starts
/// from an empty stage folder; writes the done file at the end.
fn attempt(
    run: &RunDir,
    p: &StagePlan,
    fp: &str,
    inputs: Vec<state::FileHash>,
    force: bool,
    tag: &str,
) -> Result<(f64, bool)> {
    state::remove(&run.done_file(p.stage))?;
    let previous: Option<Attempt> = state::read(&run.attempt_file(p.stage));
    let dir = run.stage_dir(p.stage);
    let resume = !force && previous.is_some_and(|a| a.fingerprint == fp) && dir.exists();
    if resume {
        eprintln!("cai: pipeline: {tag}: resuming the interrupted attempt");
    } else {
        if dir.exists() {
            eprintln!(
                "cai: pipeline: {tag}: config or inputs changed, starting over in {}",
                dir.display()
            );
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot empty {}", dir.display()))?;
        } else {
            eprintln!("cai: pipeline: {tag}: running");
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let started_unix = now_unix();
    state::write(
        &run.attempt_file(p.stage),
        &Attempt {
            stage: p.stage,
            fingerprint: fp.to_string(),
            started_unix,
        },
    )?;
    let t0 = Instant::now();
    let summary = execute(&p.job)?;
    let seconds = t0.elapsed().as_secs_f64();
    let outputs = state::hash_outputs(p)?.with_context(|| {
        format!(
            "stage `{}` finished without writing all of {}",
            p.stage,
            p.outputs
                .iter()
                .map(|o| o.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let done = Done {
        stage: p.stage,
        fingerprint: fp.to_string(),
        cai_version: env!("CARGO_PKG_VERSION").into(),
        inputs,
        outputs,
        started_unix,
        finished_unix: now_unix(),
        seconds,
        resumed: resume,
        summary,
    };
    state::write(&run.done_file(p.stage), &done)?;
    eprintln!("cai: pipeline: {tag}: done in {seconds:.1} s");
    Ok((seconds, resume))
}

/// Runs a stage's job; returns its counters. Training stages continue from their latest
/// checkpoint when one is there (a fresh attempt starts from an empty folder).
fn execute(job: &Job) -> Result<Value> {
    match job {
        Job::Revise(c) => Ok(serde_json::to_value(crate::stages::revise::run(c)?)?),
        Job::Sft(c) => {
            let mut c = c.clone();
            c.resume = has_checkpoint(&c.out)?;
            let s = crate::stages::sft::run(&c)?;
            Ok(json!({
                "train_examples": s.train_examples,
                "eval_examples": s.eval_examples,
                "steps": s.steps,
                "eval_loss_before": s.eval_loss_before,
                "eval_loss_after": s.eval_loss_after,
                "tokens_per_s": s.tokens_per_s,
            }))
        }
        Job::Sample(c) => Ok(serde_json::to_value(crate::stages::sample::run(c)?)?),
        Job::Label(j) => {
            let mut out = json!({"labels": crate::stages::label::run(&j.label)?});
            if let Some(h) = &j.human {
                out["human_check"] = serde_json::to_value(crate::stages::label::run(&h.label)?)?;
                let r = crate::compare::run(&h.compare)?;
                let f = &r.files[0];
                out["human_agreement"] = json!({"n": f.n_scored, "agreement": f.agreement});
            }
            Ok(out)
        }
        Job::Rm(c) => {
            let mut c = c.clone();
            c.resume = has_checkpoint(&c.out)?;
            let s = crate::stages::rm::run(&c)?;
            Ok(json!({
                "train_pairs": s.train_pairs,
                "eval_pairs": s.eval_pairs,
                "steps": s.steps,
                "eval_accuracy": s.eval.as_ref().map(|e| e.accuracy),
                "pairs_per_s": s.pairs_per_s,
            }))
        }
        Job::Dpo(c) => {
            let mut c = c.clone();
            c.resume = has_checkpoint(&c.out)?;
            let s = crate::stages::dpo::run(&c)?;
            Ok(json!({
                "train_pairs": s.train_pairs,
                "eval_pairs": s.eval_pairs,
                "steps": s.steps,
                "eval_accuracy_before": s.eval_before.as_ref().map(|e| e.accuracy),
                "eval_accuracy_after": s.eval_after.as_ref().map(|e| e.accuracy),
                "tokens_per_s": s.tokens_per_s,
            }))
        }
        Job::Rl(c) => {
            let mut c = c.clone();
            c.resume = has_checkpoint(&c.out)?;
            Ok(serde_json::to_value(crate::stages::ppo::run(&c)?)?)
        }
        Job::Eval(c) => Ok(serde_json::to_value(crate::stages::eval::run(c)?)?),
    }
}

fn has_checkpoint(out: &Path) -> Result<bool> {
    Ok(out.exists() && latest_checkpoint(out)?.is_some())
}

/// `<run>/pipeline.yaml`: every stage's resolved config, and a copy of the constitution.
fn write_resolved(cfg: &PipelineConfig, run: &RunDir, plans: &[StagePlan]) -> Result<()> {
    let mut doc = serde_json::to_value(cfg)?;
    for p in plans {
        doc[p.stage.name()] = p.config_json()?;
    }
    crate::redact::redact_json(&mut doc);
    let path = run.resolved_config();
    let text = format!(
        "# Resolved by cai pipeline (the section configs as the stages ran them).\n{}",
        serde_yaml::to_string(&doc)?
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if cfg.has(Stage::Revise) || cfg.has(Stage::Label) {
        let c = &cfg.constitution;
        match crate::constitution::builtin(c).filter(|_| !c.exists()) {
            Some(text) => std::fs::write(run.constitution(), text),
            None => std::fs::copy(c, run.constitution()).map(drop),
        }
        .with_context(|| {
            format!(
                "cannot copy the constitution {} into the run folder",
                cfg.constitution.display()
            )
        })?;
    }
    Ok(())
}
