//! The SFT training loop with checkpoints and exact resume.
//!
//! [`SftTrainer`] owns the parameters, optimizer, schedule and data position.
//! Everything a step depends on (weights, moments, step, epoch and cursor; the
//! permutation of an epoch is a pure function of seed and epoch) is saved in a
//! checkpoint, so a resumed run repeats the uninterrupted one.

use super::data::{eval_loss, prepare_examples, split_by_tokens, Batch, TokenizedExample};
use super::log::{CsvLog, StepStats, TrainEvent, TrainObserver};
use super::model::{CausalLm, Llama};
use super::optim::{AdamW, Gradients, LrSchedule};
use super::params::ParamStore;
use super::resume;
use super::sft::{NonFiniteError, SftConfig, SftSummary};
use crate::artifacts::OPTIMIZER_FILE;
use crate::artifacts::{FINAL_DIR, TRAIN_LOG};
use crate::hash::Fnv1a;
use crate::model_files::checkpoint::{self, ExtraFiles};
use crate::model_files::config::LlamaConfig;
use crate::model_files::weights::Weights;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the trainer stands; saved as `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Epoch of the next training example.
    pub epoch: usize,
    /// Index of the next example in that epoch's permutation.
    pub cursor: usize,
    /// Steps the run will take.
    pub total_steps: usize,
    /// FNV-1a hash of the prepared training set, checked on resume.
    pub data_fingerprint: String,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Last held-out loss.
    pub last_eval_loss: Option<f64>,
    /// The run's settings.
    pub config: SftConfig,
}

/// The SFT training loop (see the module docs).
pub struct SftTrainer {
    cfg: SftConfig,
    params: ParamStore,
    model: Llama,
    opt: AdamW,
    schedule: LrSchedule,
    train: Vec<TokenizedExample>,
    eval: Vec<TokenizedExample>,
    order: (usize, Vec<usize>),
    state: TrainerState,
    truncated: usize,
    dropped: usize,
    last_checkpoint: Option<PathBuf>,
    device: Device,
}

impl SftTrainer {
    /// A fresh run on `weights` (LoRA adapters are initialised from the seed).
    pub fn new(
        model_config: &LlamaConfig,
        weights: Weights,
        train: &[TokenizedExample],
        eval: &[TokenizedExample],
        cfg: SftConfig,
    ) -> Result<Self> {
        let (_, device) = crate::model_files::weights::dtype_device(&weights)?;
        let params = ParamStore::fresh(model_config, weights, cfg.trainable.clone(), cfg.seed)?;
        let opt = AdamW::new(cfg.adamw());
        Self::assemble(params, opt, train, eval, cfg, None, &device)
    }

    /// Continues the run saved in the checkpoint folder `dir` on the same data, with the same
    /// settings `cfg` but for its length ([`resume::check_settings`]).
    pub fn resume(
        dir: &Path,
        train: &[TokenizedExample],
        eval: &[TokenizedExample],
        device: &Device,
        cfg: SftConfig,
    ) -> Result<Self> {
        let state: TrainerState = resume::read_state(dir)?;
        resume::check_settings(dir, &state.config, &cfg)?;
        let params = ParamStore::restore(dir, cfg.trainable.clone(), device)?;
        let opt = AdamW::load(cfg.adamw(), &dir.join(OPTIMIZER_FILE), device)?;
        ensure!(
            opt.step_count() as usize == state.step,
            "optimizer is at step {} but the trainer state at {}",
            opt.step_count(),
            state.step
        );
        let mut trainer = Self::assemble(params, opt, train, eval, cfg, Some(state), device)?;
        trainer.last_checkpoint = Some(dir.to_path_buf());
        Ok(trainer)
    }

    fn assemble(
        params: ParamStore,
        opt: AdamW,
        train: &[TokenizedExample],
        eval: &[TokenizedExample],
        cfg: SftConfig,
        saved: Option<TrainerState>,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let prepared = prepare_examples(train, cfg.max_len).context("preparing training data")?;
        ensure!(
            !prepared.examples.is_empty(),
            "no training example has a loss target"
        );
        let eval = prepare_examples(eval, cfg.max_len)
            .context("preparing eval data")?
            .examples;
        let fingerprint = examples_fingerprint(&prepared.examples);
        let total_steps = cfg.total_steps(prepared.examples.len());
        let state = match saved {
            Some(state) => {
                ensure!(
                    state.data_fingerprint == fingerprint,
                    "the training data differ from those of the checkpoint"
                );
                // The length may differ from the checkpoint's (see `resume`).
                TrainerState {
                    total_steps,
                    config: cfg.clone(),
                    ..state
                }
            }
            None => TrainerState {
                step: 0,
                epoch: 0,
                cursor: 0,
                total_steps,
                data_fingerprint: fingerprint,
                last_loss: None,
                last_eval_loss: None,
                config: cfg.clone(),
            },
        };
        let schedule = LrSchedule {
            peak_lr: cfg.lr,
            warmup_steps: cfg.warmup_steps,
            total_steps: state.total_steps,
            kind: cfg.schedule,
            min_lr_ratio: cfg.min_lr_ratio,
        };
        let model = params.training_model(cfg.dtype)?;
        let order = (
            state.epoch,
            epoch_order(cfg.seed, state.epoch, prepared.examples.len()),
        );
        Ok(Self {
            cfg,
            params,
            model,
            opt,
            schedule,
            train: prepared.examples,
            eval,
            order,
            state,
            truncated: prepared.truncated,
            dropped: prepared.dropped,
            last_checkpoint: None,
            device: device.clone(),
        })
    }

    /// Position and settings of the run.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The model being trained (shares the trained parameters).
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The parameters (trainable and frozen).
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// Whether all steps are done.
    pub fn is_done(&self) -> bool {
        self.state.step >= self.state.total_steps
    }

    /// Indices of the next micro-batch; micro-batches do not cross epochs.
    fn next_micro_batch(&mut self) -> Vec<usize> {
        let n = self.train.len();
        if self.order.0 != self.state.epoch {
            self.order = (
                self.state.epoch,
                epoch_order(self.cfg.seed, self.state.epoch, n),
            );
        }
        let end = (self.state.cursor + self.cfg.batch_size).min(n);
        let picked = self.order.1[self.state.cursor..end].to_vec();
        self.state.cursor = end;
        if end == n {
            self.state.epoch += 1;
            self.state.cursor = 0;
        }
        picked
    }

    fn non_finite(&self, step: usize, what: &'static str, value: f64) -> anyhow::Error {
        anyhow::Error::new(NonFiniteError {
            step,
            what,
            value,
            last_checkpoint: self.last_checkpoint.clone(),
        })
    }

    /// Runs one optimizer step.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let started = Instant::now();
        let step = self.state.step + 1;
        let epoch = self.state.epoch;
        let lr = self.schedule.lr(step);
        let mut batches = Vec::with_capacity(self.cfg.grad_accum);
        for _ in 0..self.cfg.grad_accum {
            let indices = self.next_micro_batch();
            let examples: Vec<&TokenizedExample> =
                indices.iter().map(|&i| &self.train[i]).collect();
            let units: Vec<(usize, usize)> = examples.iter().map(|e| (1, e.tokens.len())).collect();
            for part in split_by_tokens(&units, self.cfg.max_batch_tokens) {
                batches.push(Batch::new(&examples[part], &self.device)?);
            }
        }
        let num_targets: usize = batches.iter().map(|b| b.num_targets).sum();
        let mut grads = Gradients::new();
        let mut loss = 0f64;
        for batch in &batches {
            let part = (batch.nll_sum(&self.model)? / num_targets as f64)?;
            let value = part.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(self.non_finite(step, "loss", value));
            }
            loss += value;
            grads.accumulate(self.params.vars(), self.model.backward(&part)?)?;
        }
        let grad_norm = grads.clip_global_norm(self.cfg.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(self.non_finite(step, "gradient norm", grad_norm));
        }
        self.opt.step(self.params.vars(), &grads, lr)?;
        self.state.step = step;
        self.state.last_loss = Some(loss);
        let tokens: usize = batches.iter().map(|b| b.num_tokens).sum();
        let seconds = started.elapsed().as_secs_f64();
        Ok(StepStats {
            step,
            total_steps: self.state.total_steps,
            epoch,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
        })
    }

    /// Mean held-out loss (`None` without eval examples).
    pub fn evaluate(&mut self) -> Result<Option<f64>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let (loss, _) = eval_loss(&self.model, &self.eval, self.cfg.batch_size, &self.device)?;
        self.state.last_eval_loss = Some(loss);
        Ok(Some(loss))
    }

    /// Writes a resumable checkpoint folder (base weights, adapters for LoRA, trainer
    /// state, optimizer) to `dir`.
    pub fn save_checkpoint(&mut self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_dir_atomically(dir, |tmp| {
            self.params.write_checkpoint_files(tmp, extra_files)?;
            self.opt.save(&tmp.join(OPTIMIZER_FILE))?;
            resume::write_state(tmp, &self.state)
        })?;
        self.last_checkpoint = Some(dir.to_path_buf());
        Ok(())
    }

    /// Writes the trained model as a plain folder (LoRA adapters merged) to `dir`, with
    /// `trainer_state.json` for the record.
    pub fn save_final(&self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_dir_atomically(dir, |tmp| {
            self.params.write_final_files(tmp, extra_files)?;
            resume::write_state(tmp, &self.state)
        })
    }

    /// Trains to the end: logs every step to `out_dir/train_log.csv` and `observer`,
    /// evaluates and checkpoints on schedule, and writes `out_dir/final`.
    pub fn run(
        &mut self,
        out_dir: &Path,
        extra_files: ExtraFiles,
        observer: &mut dyn TrainObserver,
    ) -> Result<SftSummary> {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let mut log = CsvLog::open(&out_dir.join(TRAIN_LOG), self.state.step)?;
        let mut eval_done_at = None;
        while !self.is_done() {
            let stats = self.train_step()?;
            observer.on_event(&TrainEvent::Step(&stats));
            let step = stats.step;
            let mut eval = None;
            if (self.cfg.eval_every > 0 && step % self.cfg.eval_every == 0) || self.is_done() {
                eval = self.evaluate()?;
                eval_done_at = Some(step);
                if let Some(loss) = eval {
                    observer.on_event(&TrainEvent::Eval { step, loss });
                }
            }
            log.append(&stats, eval)?;
            if self.cfg.save_every > 0 && step % self.cfg.save_every == 0 {
                let dir = checkpoint::checkpoint_dir(out_dir, step);
                self.save_checkpoint(&dir, extra_files)?;
                observer.on_event(&TrainEvent::Checkpoint { step, path: &dir });
            }
        }
        if eval_done_at != Some(self.state.step) {
            self.evaluate()?;
        }
        let final_dir = out_dir.join(FINAL_DIR);
        self.save_final(&final_dir, extra_files)?;
        observer.on_event(&TrainEvent::Checkpoint {
            step: self.state.step,
            path: &final_dir,
        });
        Ok(SftSummary {
            steps: self.state.step,
            final_loss: self.state.last_loss,
            final_eval_loss: self.state.last_eval_loss,
            final_dir,
            truncated: self.truncated,
            dropped: self.dropped,
        })
    }
}

/// The order of the training examples in `epoch`: a permutation seeded by `seed` on the
/// ChaCha stream `epoch`, so any epoch can be recomputed on resume.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// FNV-1a hash of the examples' tokens and masks, as 16 hex digits.
fn examples_fingerprint(examples: &[TokenizedExample]) -> String {
    let mut hash = Fnv1a::default();
    let mut feed = |x: u64| hash.write_u64(x);
    for ex in examples {
        feed(ex.tokens.len() as u64);
        for (&t, &m) in ex.tokens.iter().zip(&ex.loss_mask) {
            feed(u64::from(t) << 1 | u64::from(m));
        }
    }
    hash.hex()
}

/// How a run starts.
// Built once per run, so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum SftStart {
    /// From base weights.
    Fresh {
        /// Config of the base model.
        model_config: LlamaConfig,
        /// Base weights (f32 for training), e.g. from [`load_gguf`](crate::model_files::weights::load_gguf).
        weights: Weights,
        /// Settings of the run.
        config: SftConfig,
    },
    /// From a `checkpoint-N` folder of an earlier run, whose settings must equal `config` but
    /// for the run's length.
    Resume {
        /// The checkpoint folder.
        checkpoint: PathBuf,
        /// Device to train on.
        device: Device,
        /// Settings of the run.
        config: SftConfig,
    },
}

/// Trains (or resumes) a run to the end, writing `checkpoint-N` folders, the final
/// model folder `final/` and `train_log.csv` into `out_dir`.
pub fn train_sft(
    start: SftStart,
    train: &[TokenizedExample],
    eval: &[TokenizedExample],
    out_dir: &Path,
    extra_files: ExtraFiles,
    observer: &mut dyn TrainObserver,
) -> Result<SftSummary> {
    let mut trainer = match start {
        SftStart::Fresh {
            model_config,
            weights,
            config,
        } => SftTrainer::new(&model_config, weights, train, eval, config)?,
        SftStart::Resume {
            checkpoint,
            device,
            config,
        } => SftTrainer::resume(&checkpoint, train, eval, &device, config)?,
    };
    trainer.run(out_dir, extra_files, observer)
}
