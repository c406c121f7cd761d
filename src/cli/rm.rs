//! `cai train rm`: a reward model on AI and human preference labels.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::Args;

use super::args::{parsed, set, TrainingArgs};
use super::help_defaults::Source;
use crate::config_file::read_or_default;
use crate::stages::rm::{self, TrainRmConfig};
use crate::train::reward_data::DataSource;
use crate::train::LoraConfig;

/// The flags of `cai train rm`.
#[derive(Debug, Args, Default)]
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
    /// both, so its accuracy is partly agreement with the labeller (`--eval-fraction` is the
    /// old spelling).
    #[arg(long, alias = "eval-fraction", conflicts_with = "eval")]
    pub eval_split: Option<f64>,
    /// Round labels to 0/1 (AI hard labels); exact ties are dropped.
    #[arg(long)]
    pub hard: bool,
    /// Output folder: checkpoints, final/, logs, metrics.json, SVG plots.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Bradley–Terry margin.
    #[arg(long)]
    pub margin: Option<f64>,
    /// Reward-centering coefficient c of c·(r_a + r_b)².
    #[arg(long)]
    pub center_coef: Option<f64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

impl RmArgs {
    /// Defaults < `--config` < flags.
    pub fn resolve(self) -> Result<TrainRmConfig> {
        let a = self;
        let mut c: TrainRmConfig = read_or_default(a.config.as_deref())?;
        set(&mut c.model, a.model);
        if !a.data.is_empty() {
            c.data = a.data;
        }
        c.eval = a.eval.or(c.eval);
        set(&mut c.eval_fraction, a.eval_split);
        c.hard |= a.hard;
        set(&mut c.out, a.out);
        let lora = LoraConfig {
            targets: vec!["all".into()],
            ..LoraConfig::default()
        };
        a.training.apply(&mut c.train, &lora)?;
        set(&mut c.margin, a.margin);
        set(&mut c.center_coef, a.center_coef);
        c.quiet |= a.quiet;
        c.resume |= a.resume;
        ensure!(
            !c.data.is_empty(),
            "no training data: give --data FILE[:WEIGHT] or `data:` in the config"
        );
        ensure!(
            (0.0..1.0).contains(&c.eval_fraction),
            "eval_fraction must be within [0, 1)"
        );
        Ok(c)
    }
}

/// Defaults for `--help`: the config's (`--eval-split` is `eval_fraction` in the file).
pub fn help_defaults() -> (TrainRmConfig, Vec<(&'static str, Source)>) {
    let d = TrainRmConfig::default();
    let trainable = Source::Text(super::args::describe_trainable(&d.train.trainable));
    (
        d,
        vec![
            ("eval_split", Source::Path("eval_fraction")),
            ("trainable", trainable),
            ("lora_targets", Source::Text("all".into())),
        ],
    )
}

/// Runs `cai train rm`.
pub fn run(args: RmArgs) -> Result<()> {
    let cfg = args.resolve()?;
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
