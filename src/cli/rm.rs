//! `cai train rm`: a reward model on AI and human preference labels.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::args::{parsed, resumable_training_to, TrainingArgs};
use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::stages::rm::{self, TrainRmConfig};
use crate::train::reward_data::DataSource;
use crate::train::LoraConfig;

/// The flags of `cai train rm`.
#[derive(Debug, Args, Default, Serialize)]
pub struct RmArgs {
    /// YAML file with any TrainRmConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Backbone: `default`, a .gguf file, a model folder (e.g. an SFT checkpoint) or a
    /// Hugging Face id from the local cache.
    #[arg(long)]
    pub model: Option<String>,
    /// Training pairs: a `cai label` file (soft label p_a) or human pairs (HH-RLHF, TRL,
    /// ours); `FILE:WEIGHT` weights its pairs in the loss. Repeat to mix sources.
    #[arg(long = "data", value_name = "FILE[:WEIGHT]", value_parser = parsed::<DataSource>)]
    pub data: Vec<DataSource>,
    /// Held-out labelled pairs (HH-RLHF, TRL, ours) for accuracy, ECE and reward spread;
    /// training pairs whose conversation is in it are dropped (and counted).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Without --eval: about this fraction of the training pairs is held out, as whole
    /// conversations drawn at random by --seed; a mix of AI labels and human pairs holds out
    /// both, so its accuracy is partly agreement with the labeller (`--eval-split` is the
    /// old spelling).
    #[arg(long, visible_alias = "eval-split", conflicts_with = "eval")]
    pub eval_fraction: Option<f64>,
    /// Round labels to 0/1 (AI hard labels); exact ties are dropped.
    #[arg(long, overrides_with = "no_hard")]
    pub hard: bool,
    /// Soft labels (undoes `hard: true` in --config).
    #[arg(long, overrides_with = "hard")]
    pub no_hard: bool,
    /// Output folder: checkpoints, final/, logs, metrics.json, SVG plots.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long, overrides_with = "no_resume")]
    pub resume: bool,
    /// Start afresh (undoes `resume: true` in --config).
    #[arg(long, overrides_with = "resume")]
    pub no_resume: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub training: TrainingArgs,
    /// Bradley–Terry margin.
    #[arg(long)]
    pub margin: Option<f64>,
    /// Reward-centering coefficient c of c·(r_a + r_b)².
    #[arg(long)]
    pub center_coef: Option<f64>,
    /// No progress bar.
    #[arg(long, short, overrides_with = "no_quiet")]
    pub quiet: bool,
    /// Show the progress bar (undoes `quiet: true` in --config).
    #[arg(long, overrides_with = "quiet")]
    pub no_quiet: bool,
}

impl Flags for RmArgs {
    type Config = TrainRmConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn to(id: &str) -> Option<To> {
        resumable_training_to(id)
    }

    /// The trainable group (LoRA on all linear layers by default), checks.
    fn finish(&self, c: &mut TrainRmConfig) -> Result<()> {
        c.resume = self.resume;
        let lora = LoraConfig {
            targets: vec!["all".into()],
            ..LoraConfig::default()
        };
        self.training
            .trainable
            .apply(&mut c.train.trainable, &lora)?;
        ensure!(
            !c.data.is_empty(),
            "no training data: give --data FILE[:WEIGHT] or `data:` in the config"
        );
        ensure!(
            (0.0..1.0).contains(&c.eval_fraction),
            "eval_fraction must be within [0, 1)"
        );
        Ok(())
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (TrainRmConfig, Vec<(&'static str, Source)>) {
    let d = TrainRmConfig::default();
    let trainable = Source::Text(super::args::describe_trainable(&d.train.trainable));
    (
        d,
        vec![
            ("trainable", trainable),
            ("lora_targets", Source::Text("all".into())),
        ],
    )
}

/// Runs `cai train rm`.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<RmArgs>(m)?;
    let s = rm::run(&cfg)?;
    eprintln!(
        "cai: train rm: {} steps on {} pairs ({:.2} pairs/s, {:.0} tokens/s) -> {}",
        s.steps,
        s.train_pairs,
        s.pairs_per_s,
        s.tokens_per_s,
        s.final_dir.display()
    );
    if let Some(e) = &s.eval {
        println!(
            "held-out: {} pairs ({}), accuracy {:.4} on {} decided, ECE {}, loss {:.4}, reward \
             chosen {:.3}±{:.3}, rejected {:.3}±{:.3}",
            e.pairs,
            s.held_out.sources,
            e.accuracy,
            e.decided,
            e.ece.map_or("-".into(), |x| format!("{x:.4}")),
            e.loss,
            e.chosen.mean,
            e.chosen.std,
            e.rejected.mean,
            e.rejected.std
        );
    }
    Ok(())
}
