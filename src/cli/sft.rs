//! `cai train sft`: supervised fine-tuning on critique → revision data (SL-CAI).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::args::{parsed, training_to, TrainingArgs};
use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::stages::sft::data::RoundChoice;
use crate::stages::sft::{self, SftRunConfig};
use crate::train::LoraConfig;

/// The flags of `cai train sft`.
#[derive(Debug, Args, Serialize)]
pub struct SftArgs {
    /// YAML file with any SftRunConfig fields (training settings under `train:`); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base model: `default`, a .gguf file, a model folder (a cai checkpoint too) or a
    /// Hugging Face id from the local cache.
    #[arg(long)]
    pub model: Option<String>,
    /// Training data: `cai revise` output, or TRL SFT rows (`messages`, or
    /// `prompt`/`completion`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Which revision of `cai revise` records is the target: `final`, `all` (one
    /// example per round, SL-CAI-n) or a round number from 1.
    #[arg(long, value_parser = parsed::<RoundChoice>)]
    pub round: Option<RoundChoice>,
    /// Output folder: checkpoint-N/, final/, train_log.csv, loss.svg, manifest.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fraction of the data held out for the eval loss.
    #[arg(long, conflicts_with = "eval")]
    pub eval_split: Option<f64>,
    /// Held-out data file (same formats as --data) instead of a split.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long, overrides_with = "no_resume")]
    pub resume: bool,
    /// Start afresh (undoes `resume: true` in --config).
    #[arg(long, overrides_with = "resume")]
    pub no_resume: bool,
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

impl Flags for SftArgs {
    type Config = SftRunConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn to(id: &str) -> Option<To> {
        training_to(id)
    }

    /// `--eval-split` replaces a `--config` file's `eval:`; the trainable group.
    fn finish(&self, c: &mut SftRunConfig) -> Result<()> {
        if self.eval_split.is_some() {
            c.eval = None;
        }
        let t = &self.training.trainable;
        t.apply(&mut c.train.trainable, &LoraConfig::default())?;
        ensure!(
            (0.0..1.0).contains(&c.eval_split),
            "eval_split must be within [0, 1), got {}",
            c.eval_split
        );
        c.train.validate()?;
        Ok(())
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (SftRunConfig, Vec<(&'static str, Source)>) {
    let d = SftRunConfig::default();
    let trainable = Source::Text(super::args::describe_trainable(&d.train.trainable));
    (d, vec![("trainable", trainable)])
}

/// Runs `cai train sft`.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<SftArgs>(m)?;
    let s = sft::run(&cfg)?;
    let loss = |l: Option<f64>| l.map_or("-".to_string(), |l| format!("{l:.4}"));
    eprintln!(
        "cai: train sft: {} steps on {} examples ({} held out), held-out loss {} -> {}, \
         {:.0} tokens/s -> {}",
        s.steps,
        s.train_examples,
        s.eval_examples,
        loss(s.eval_loss_before),
        loss(s.eval_loss_after),
        s.tokens_per_s,
        s.final_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Trainable;

    fn resolve(argv: &[&str]) -> Result<SftRunConfig> {
        overlay::resolve_flags::<SftArgs>(argv)
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let yaml = dir.path().join("sft.yaml");
        std::fs::write(
            &yaml,
            "model: m.gguf\nround: all\neval_split: 0.2\ntrain:\n  lr: 0.001\n  epochs: 3\n  \
             trainable: !lora {rank: 4, alpha: 8, targets: [all]}\n",
        )?;
        let y = yaml.to_str().unwrap();
        let c = resolve(&["--config", y])?;
        assert_eq!(
            (c.model.as_str(), c.round, c.eval_split),
            ("m.gguf", RoundChoice::All, 0.2)
        );
        assert_eq!(
            (c.train.lr, c.train.epochs, c.train.batch_size),
            (1e-3, 3, 4)
        );
        let c = resolve(&[
            "--config",
            y,
            "--lr",
            "2e-4",
            "--lora-rank",
            "16",
            "--round",
            "1",
        ])?;
        let lora = c.train.trainable.lora().unwrap();
        assert_eq!((c.train.lr, lora.rank, lora.alpha), (2e-4, 16, 8.0));
        assert_eq!(c.round, RoundChoice::Round(1));
        let c = resolve(&["--config", y, "--top-layers", "2"])?;
        assert_eq!(c.train.trainable, Trainable::TopLayers(2));
        let c = resolve(&["--lora-alpha", "32"])?;
        assert_eq!(
            c.train.trainable,
            Trainable::Lora(LoraConfig {
                alpha: 32.0,
                ..LoraConfig::default()
            })
        );
        assert!(resolve(&["--trainable", "top-layers"]).is_err());
        assert!(resolve(&["--eval-split", "1.5"]).is_err());
        std::fs::write(&yaml, "train:\n  learning_rate: 1\n")?;
        let err = format!("{:#}", resolve(&["--config", y]).unwrap_err());
        assert!(err.contains("sft.yaml:2:"), "{err}");
        Ok(())
    }
}
