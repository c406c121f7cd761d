//! `cai train dpo`: DPO and its variants on preference pairs, against a frozen reference.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::args::{parsed, resumable_training_to, TrainingArgs};
use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::stages::dpo::{self, TrainDpoConfig};
use crate::train::dpo_loss::DpoLoss;
use crate::train::reward_data::DataSource;
use crate::train::LoraConfig;

/// The flags of `cai train dpo`; its `--help` text (data handling: ties, identical pairs) is
/// on [`TrainCommand::Dpo`](super::train::TrainCommand::Dpo).
#[derive(Debug, Args, Default, Serialize)]
pub struct DpoArgs {
    /// YAML file with any TrainDpoConfig fields (optimizer settings under `train:`); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Starting policy: `default`, a .gguf file, a model folder (e.g. runs/sft/final) or a
    /// Hugging Face id from the local cache.
    #[arg(long)]
    pub model: Option<String>,
    /// Frozen reference model (by default the starting policy). Its log-probabilities of every
    /// pair are computed once and kept in OUT/reference_logps.json, which a resumed or
    /// repeated run reuses.
    #[arg(long)]
    pub reference: Option<String>,
    /// Training pairs: `cai label` output, human pairs or `cai revise` output;
    /// `FILE:WEIGHT` weights its pairs. Repeat to mix sources.
    #[arg(long = "data", value_name = "FILE[:WEIGHT]", value_parser = parsed::<DataSource>)]
    pub data: Vec<DataSource>,
    /// Held-out pairs (normally human: HH-RLHF, TRL, ours) for implicit-reward accuracy,
    /// margins and log-prob drift; training pairs whose conversation is in it are dropped (and
    /// counted).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Without --eval: about this fraction of the training pairs is held out, as whole
    /// conversations drawn at random by --seed (`--eval-split` is the old spelling).
    #[arg(long, visible_alias = "eval-split", conflicts_with = "eval")]
    pub eval_fraction: Option<f64>,
    /// Output folder: reference_logps.json, checkpoint-N/, final/ (usable as --model),
    /// train_log.csv, eval_log.csv, metrics.json, manifest.json, SVG plots.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long, overrides_with = "no_resume")]
    pub resume: bool,
    /// Start afresh (undoes `resume: true` in --config).
    #[arg(long, overrides_with = "resume")]
    pub no_resume: bool,
    /// Loss: sigmoid (DPO, label rounded), cdpo (soft label as the target), robust (rDPO,
    /// label rounded, one flip rate ε = --label-smoothing for every pair), ipo (soft target on
    /// per-token log-ratios), hinge (SLiC).
    #[arg(long, value_parser = parsed::<DpoLoss>)]
    pub loss: Option<DpoLoss>,
    /// β of the implicit reward β·log(π/π_ref).
    #[arg(long)]
    pub beta: Option<f64>,
    /// Label smoothing ε: cdpo's target ε + (1 − 2ε)·p, robust's flip rate (with ε = 0
    /// robust is sigmoid). Refused by sigmoid, ipo and hinge, which would ignore it.
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub training: TrainingArgs,
    /// No progress bar.
    #[arg(long, short, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Show the progress bar (undoes `quiet: true` in --config).
    #[arg(long, overrides_with = "quiet")]
    pub no_quiet: bool,
}

impl Flags for DpoArgs {
    type Config = TrainDpoConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn to(id: &str) -> Option<To> {
        resumable_training_to(id)
    }

    /// The trainable group, checks.
    fn finish(&self, c: &mut TrainDpoConfig) -> Result<()> {
        c.resume = self.resume;
        let t = &self.training.trainable;
        t.apply(&mut c.train.trainable, &LoraConfig::default())?;
        ensure!(
            !c.data.is_empty(),
            "no training data: give --data FILE[:WEIGHT] (cai label, human pairs or cai revise \
             output) or `data:` in the config"
        );
        ensure!(
            (0.0..1.0).contains(&c.eval_fraction),
            "eval_fraction must be within [0, 1), got {}",
            c.eval_fraction
        );
        c.validate()?;
        Ok(())
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (TrainDpoConfig, Vec<(&'static str, Source)>) {
    let d = TrainDpoConfig::default();
    let trainable = Source::Text(super::args::describe_trainable(&d.train.trainable));
    (d, vec![("trainable", trainable)])
}

/// Runs `cai train dpo`.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<DpoArgs>(m)?;
    let s = dpo::run(&cfg)?;
    eprintln!(
        "cai: train dpo: {} steps on {} pairs ({} loss, β {}; {:.2} pairs/s, {:.0} \
         tokens/s) -> {}",
        s.steps,
        s.train_pairs,
        cfg.loss,
        cfg.beta,
        s.pairs_per_s,
        s.tokens_per_s,
        s.final_dir.display()
    );
    if let (Some(a), Some(b)) = (&s.eval_before, &s.eval_after) {
        println!(
            "held-out: {} pairs ({}), implicit-reward accuracy {:.4} -> {:.4} on {} decided, \
             margin {:.4} -> {:.4}, log-prob accuracy {:.4} -> {:.4}, drift chosen {:.3}, \
             rejected {:.3} nats",
            b.pairs,
            s.held_out.sources,
            a.accuracy,
            b.accuracy,
            b.decided,
            a.margin,
            b.margin,
            a.logp_accuracy,
            b.logp_accuracy,
            b.chosen_drift,
            b.rejected_drift
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Trainable;

    fn resolve(argv: &[&str]) -> Result<TrainDpoConfig> {
        overlay::resolve_flags::<DpoArgs>(argv)
    }

    /// `--resume` has no key in the config file (so no place in the overlay): it is set from
    /// the flags, and `--no-resume` after it undoes it.
    #[test]
    fn resume_is_a_flag_only_and_no_resume_undoes_it() -> Result<()> {
        assert!(!resolve(&["--data", "x"])?.resume);
        assert!(resolve(&["--data", "x", "--resume"])?.resume);
        assert!(!resolve(&["--data", "x", "--resume", "--no-resume"])?.resume);
        assert!(resolve(&["--data", "x", "--no-resume", "--resume"])?.resume);
        let rm = |argv: &[&str]| overlay::resolve_flags::<crate::cli::rm::RmArgs>(argv);
        assert!(rm(&["--data", "x", "--resume"])?.resume);
        assert!(!rm(&["--data", "x", "--resume", "--no-resume"])?.resume);
        Ok(())
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let yaml = dir.path().join("dpo.yaml");
        std::fs::write(
            &yaml,
            "data: [{path: l.jsonl, weight: 2}]\nloss: cdpo\nbeta: 0.2\ntrain:\n  lr: 0.001\n",
        )?;
        let y = yaml.to_str().unwrap();
        let c = resolve(&["--config", y])?;
        assert_eq!((c.loss, c.beta, c.train.lr), (DpoLoss::Cdpo, 0.2, 1e-3));
        assert_eq!((c.data[0].weight, c.train.batch_size), (2.0, 4));
        let c = resolve(&[
            "--config",
            y,
            "--loss",
            "ipo",
            "--beta",
            "0.5",
            "--data",
            "h.jsonl:0.5",
            "--top-layers",
            "2",
        ])?;
        assert_eq!((c.loss, c.beta), (DpoLoss::Ipo, 0.5));
        assert_eq!(c.data, vec!["h.jsonl:0.5".parse::<DataSource>()?]);
        assert_eq!(c.train.trainable, Trainable::TopLayers(2));
        assert!(resolve(&[]).is_err(), "no data");
        assert!(resolve(&["--data", "x", "--beta", "0"]).is_err());
        assert!(resolve(&["--data", "x", "--label-smoothing", "0.5"]).is_err());
        // Ignored by sigmoid (the default), so refused there; cdpo and robust use it.
        let err = format!(
            "{:#}",
            resolve(&["--data", "x", "--label-smoothing", "0.1"]).unwrap_err()
        );
        assert!(
            err.contains("--label-smoothing 0.1") && err.contains("sigmoid"),
            "{err}"
        );
        for loss in ["cdpo", "robust"] {
            resolve(&["--data", "x", "--label-smoothing", "0.1", "--loss", loss])?;
        }
        assert!(resolve(&["--data", "x", "--loss", "kto"]).is_err());
        std::fs::write(&yaml, "data: [{path: l.jsonl}]\nbta: 1\n")?;
        let err = format!("{:#}", resolve(&["--config", y]).unwrap_err());
        assert!(err.contains("dpo.yaml"), "{err}");
        Ok(())
    }
}
