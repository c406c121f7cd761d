//! `cai train sft`: supervised fine-tuning on critique → revision data (SL-CAI).

use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::Args;

use super::args::{choice, parsed, set, TrainableArgs};
use super::help_defaults::Source;
use crate::config_file::read_or_default;
use crate::stages::sft::data::RoundChoice;
use crate::stages::sft::{self, SftRunConfig};
use crate::train::{LoraConfig, ScheduleKind};

/// The flags of `cai train sft`.
#[derive(Debug, Args)]
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
    #[arg(long)]
    pub resume: bool,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Passes over the data when --max-steps is not set.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Examples per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Linear warmup steps.
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Learning-rate decay after warmup.
    #[arg(long, value_parser = choice::<ScheduleKind>())]
    pub schedule: Option<ScheduleKind>,
    /// Final learning rate as a fraction of --lr.
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,
    /// Gradient-norm clip, 0 = none.
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Held-out loss every N steps (and at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps.
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Examples are cut to this many tokens, with a counted warning.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Token budget of one forward/backward pass: micro-batches larger than this (rows ×
    /// longest row) run in parts whose gradients are accumulated, for the same update.
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Seed of the data order, the eval split and LoRA initialisation.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub trainable: TrainableArgs,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

impl SftArgs {
    /// Defaults < `--config` < flags.
    pub fn resolve(self) -> Result<SftRunConfig> {
        let a = self;
        let mut c: SftRunConfig = read_or_default(a.config.as_deref())?;
        set(&mut c.model, a.model);
        c.data = a.data.or(c.data);
        set(&mut c.round, a.round);
        set(&mut c.out, a.out);
        if a.eval.is_some() {
            c.eval = a.eval;
        }
        if let Some(f) = a.eval_split {
            c.eval_split = f;
            c.eval = None;
        }
        c.resume |= a.resume;
        c.quiet |= a.quiet;
        let t = &mut c.train;
        set(&mut t.lr, a.lr);
        set(&mut t.weight_decay, a.weight_decay);
        set(&mut t.epochs, a.epochs);
        t.max_steps = a.max_steps.or(t.max_steps);
        set(&mut t.batch_size, a.batch_size);
        set(&mut t.grad_accum, a.grad_accum);
        set(&mut t.warmup_steps, a.warmup_steps);
        set(&mut t.schedule, a.schedule);
        set(&mut t.min_lr_ratio, a.min_lr_ratio);
        set(&mut t.max_grad_norm, a.max_grad_norm);
        set(&mut t.eval_every, a.eval_every);
        set(&mut t.save_every, a.save_every);
        set(&mut t.max_len, a.max_len);
        t.max_batch_tokens = a.max_batch_tokens.or(t.max_batch_tokens);
        set(&mut t.seed, a.seed);
        a.trainable
            .apply(&mut t.trainable, &LoraConfig::default())?;
        ensure!(
            (0.0..1.0).contains(&c.eval_split),
            "eval_split must be within [0, 1), got {}",
            c.eval_split
        );
        c.train.validate()?;
        Ok(c)
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (SftRunConfig, Vec<(&'static str, Source)>) {
    let d = SftRunConfig::default();
    let trainable = Source::Text(super::args::describe_trainable(&d.train.trainable));
    (d, vec![("trainable", trainable)])
}

/// Runs `cai train sft`.
pub fn run(args: SftArgs) -> Result<()> {
    let cfg = args.resolve()?;
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
    use clap::Parser;

    use super::*;
    use crate::train::Trainable;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: SftArgs,
    }

    fn resolve(argv: &[&str]) -> Result<SftRunConfig> {
        let w = Wrap::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))?;
        w.args.resolve()
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
