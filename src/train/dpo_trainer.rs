//! The DPO training loop (Rafailov et al. 2023; the offline alternative to reward model +
//! PPO): the SFT core's parameters, AdamW, schedule, clipping, checkpoints and CSV log, with
//! the preference losses of [`dpo_loss`](super::dpo_loss) on the policy's response
//! log-probabilities against the frozen reference's, which are computed once before training
//! and handed in.
//!
//! A step takes `grad_accum` micro-batches of whole conversations (see
//! [`group_batches_by`](super::reward_data::group_batches_by)) and averages the weighted pair losses over the step's total weight.
//! Everything a step depends on is in the checkpoint (weights, moments, position; the batches
//! of an epoch are a pure function of seed and epoch; the reference log-probabilities are
//! stored by the caller), so a resumed run repeats the uninterrupted one.

use super::data::{split_by_tokens, TokenizedExample};
use super::dpo_data::{pair_logps, pairs_fingerprint, sequence_logps, DpoPair};
use super::dpo_loss::{pair_losses, DpoLoss, LossSpec};
use super::dpo_metrics::{dpo_metrics, DpoEval, PairLogps};
use super::log::{CsvLog, StepStats, TrainEvent, TrainObserver};
use super::model::{CausalLm, Llama};
use super::optim::{AdamW, Gradients, LrSchedule};
use super::params::ParamStore;
use super::resume;
use super::reward_data::EpochBatches;
use super::sft::{NonFiniteError, SftConfig};
use super::{LlamaConfig, Weights};
use crate::artifacts::OPTIMIZER_FILE;
use crate::artifacts::{EVAL_LOG, FINAL_DIR, TRAIN_LOG};
use crate::hash::Fnv1a;
use crate::model_files::checkpoint::{self, ExtraFiles};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of a DPO run. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoTrainConfig {
    /// Optimizer, schedule, steps, `batch_size` (pairs per micro-batch), accumulation,
    /// trainable part, seed, `max_len` (tokens per sequence), eval/save cadence: as for SFT.
    pub train: SftConfig,
    /// The preference loss (default `sigmoid`).
    pub loss: DpoLoss,
    /// β of the implicit reward `β·log(π/ρ)` (default 0.1).
    pub beta: f64,
    /// Label smoothing ε: `cdpo` target `ε + (1 − 2ε)·p`, `robust` flip rate (default 0;
    /// refused by the other losses, which would ignore it).
    pub label_smoothing: f64,
}

impl Default for DpoTrainConfig {
    fn default() -> Self {
        Self {
            train: SftConfig {
                lr: 5e-6,
                batch_size: 4,
                grad_accum: 2,
                max_len: 512,
                eval_every: 25,
                save_every: 100,
                ..SftConfig::default()
            },
            loss: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
        }
    }
}

impl DpoTrainConfig {
    /// The loss and its constants.
    pub fn spec(&self) -> LossSpec {
        LossSpec {
            loss: self.loss,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        self.spec().validate()
    }
}

/// One step's training numbers, for curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoStepPoint {
    pub step: usize,
    pub loss: f64,
    /// Implicit-reward accuracy of the step's decided pairs.
    pub accuracy: f64,
    /// Mean implicit-reward margin (chosen − rejected) of the step's decided pairs.
    pub margin: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// Pairs and real tokens of the step, and its seconds (forward, backward, update).
    pub pairs: usize,
    pub tokens: usize,
    pub seconds: f64,
}

/// Where the run stands; saved as `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoTrainerState {
    pub step: usize,
    pub epoch: usize,
    /// Index of the next micro-batch of the epoch.
    pub cursor: usize,
    pub total_steps: usize,
    /// Hash of the tokenized training pairs and their reference log-probabilities.
    pub data_fingerprint: String,
    pub history: Vec<DpoStepPoint>,
    pub evals: Vec<DpoEval>,
    pub config: DpoTrainConfig,
}

/// Pairs with their reference log-probabilities `[a, b]` (summed over response tokens).
#[derive(Debug, Clone, Default)]
pub struct DpoData {
    pub train: Vec<DpoPair>,
    pub train_reference: Vec<[f64; 2]>,
    pub eval: Vec<DpoPair>,
    pub eval_reference: Vec<[f64; 2]>,
}

impl DpoData {
    fn check(&self, loss: DpoLoss) -> Result<()> {
        ensure!(
            !self.train.is_empty(),
            "no training pairs (every pair is held out, identical or a tie the {loss} loss \
             drops)"
        );
        ensure!(
            self.train.len() == self.train_reference.len()
                && self.eval.len() == self.eval_reference.len(),
            "reference log-probabilities do not match the pairs ({} / {} train, {} / {} eval)",
            self.train_reference.len(),
            self.train.len(),
            self.eval_reference.len(),
            self.eval.len()
        );
        let tie = self.train.iter().position(|p| !loss.keeps(p.p_a));
        ensure!(
            tie.is_none(),
            "training pair {} is a tie, which the {loss} loss cannot use",
            tie.unwrap_or(0)
        );
        ensure!(
            self.train_reference
                .iter()
                .chain(&self.eval_reference)
                .flatten()
                .all(|x| x.is_finite()),
            "a reference log-probability is not finite"
        );
        Ok(())
    }

    fn data_fingerprint(&self) -> String {
        let refs: Vec<u64> = self
            .train_reference
            .iter()
            .flatten()
            .map(|x| x.to_bits())
            .collect();
        let text = format!("{}{refs:?}", pairs_fingerprint(&self.train));
        let mut hash = Fnv1a::default();
        hash.write(text.as_bytes());
        hash.hex()
    }
}

/// The DPO training loop (see the module docs).
pub struct DpoTrainer {
    cfg: DpoTrainConfig,
    params: ParamStore,
    model: Llama,
    opt: AdamW,
    schedule: LrSchedule,
    data: DpoData,
    batches: EpochBatches,
    state: DpoTrainerState,
    last_checkpoint: Option<PathBuf>,
    device: Device,
}

impl DpoTrainer {
    /// A fresh run on policy `weights` (f32).
    pub fn new(
        model_config: &LlamaConfig,
        weights: Weights,
        data: DpoData,
        cfg: DpoTrainConfig,
    ) -> Result<Self> {
        let (_, device) = crate::model_files::weights::dtype_device(&weights)?;
        let t = &cfg.train;
        let params = ParamStore::fresh(model_config, weights, t.trainable.clone(), t.seed)?;
        let opt = AdamW::new(t.adamw());
        Self::assemble(params, opt, data, cfg, None, &device)
    }

    /// Continues the run saved in checkpoint folder `dir` on the same data, with the same
    /// settings `cfg` but for its length ([`resume::check_settings`]).
    pub fn resume(dir: &Path, data: DpoData, device: &Device, cfg: DpoTrainConfig) -> Result<Self> {
        let state: DpoTrainerState = resume::read_state(dir)?;
        resume::check_settings(dir, &state.config, &cfg)?;
        let params = ParamStore::restore(dir, cfg.train.trainable.clone(), device)?;
        let opt = AdamW::load(cfg.train.adamw(), &dir.join(OPTIMIZER_FILE), device)?;
        ensure!(
            opt.step_count() as usize == state.step,
            "{}: optimizer at step {} but trainer state at {}",
            dir.display(),
            opt.step_count(),
            state.step
        );
        let mut trainer = Self::assemble(params, opt, data, cfg, Some(state), device)?;
        trainer.last_checkpoint = Some(dir.to_path_buf());
        Ok(trainer)
    }

    fn assemble(
        params: ParamStore,
        opt: AdamW,
        data: DpoData,
        cfg: DpoTrainConfig,
        saved: Option<DpoTrainerState>,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        data.check(cfg.loss)?;
        let t = &cfg.train;
        let fingerprint = data.data_fingerprint();
        let keys = data.train.iter().map(|p| p.group.clone()).collect();
        let batches = EpochBatches::new(keys, t.batch_size, t.seed, 0);
        let total_steps = t
            .max_steps
            .unwrap_or_else(|| batches.in_epochs(t.epochs).div_ceil(t.grad_accum.max(1)));
        let state = match saved {
            Some(state) => {
                ensure!(
                    state.data_fingerprint == fingerprint,
                    "the training pairs or their reference log-probabilities differ from \
                     those of the checkpoint"
                );
                // The length may differ from the checkpoint's (see `resume`).
                DpoTrainerState {
                    total_steps,
                    config: cfg.clone(),
                    ..state
                }
            }
            None => DpoTrainerState {
                step: 0,
                epoch: 0,
                cursor: 0,
                total_steps,
                data_fingerprint: fingerprint,
                history: Vec::new(),
                evals: Vec::new(),
                config: cfg.clone(),
            },
        };
        let schedule = LrSchedule {
            peak_lr: t.lr,
            warmup_steps: t.warmup_steps,
            total_steps: state.total_steps,
            kind: t.schedule,
            min_lr_ratio: t.min_lr_ratio,
        };
        Ok(Self {
            model: params.training_model(cfg.train.dtype)?,
            cfg,
            params,
            opt,
            schedule,
            data,
            batches,
            state,
            last_checkpoint: None,
            device: device.clone(),
        })
    }

    /// Position, history and settings of the run.
    pub fn state(&self) -> &DpoTrainerState {
        &self.state
    }

    /// The policy being trained.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The policy's parameters (trainable and frozen).
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// Whether all steps are done.
    pub fn is_done(&self) -> bool {
        self.state.step >= self.state.total_steps
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
        let spec = self.cfg.spec();
        let micro: Vec<Vec<usize>> = (0..self.cfg.train.grad_accum)
            .map(|_| {
                self.batches
                    .next(&mut self.state.epoch, &mut self.state.cursor)
            })
            .collect();
        let total_weight: f64 = micro
            .iter()
            .flatten()
            .map(|&i| self.data.train[i].weight)
            .sum();
        let (mut loss, mut correct, mut margin, mut decided) = (0f64, 0f64, 0f64, 0usize);
        let (mut tokens, mut pairs) = (0usize, 0usize);
        // A pair's loss depends on its own two rows only: cutting a micro-batch into parts
        // of at most `max_batch_tokens` padded tokens leaves the update unchanged.
        let mut parts: Vec<&[usize]> = Vec::new();
        for idx in &micro {
            let units: Vec<(usize, usize)> = idx
                .iter()
                .map(|&i| &self.data.train[i])
                .map(|p| (2, p.a.tokens.len().max(p.b.tokens.len())))
                .collect();
            for part in split_by_tokens(&units, self.cfg.train.max_batch_tokens) {
                parts.push(&idx[part]);
            }
        }
        let mut grads = Gradients::new();
        for idx in parts {
            let chosen: Vec<&DpoPair> = idx.iter().map(|&i| &self.data.train[i]).collect();
            let rows: Vec<&TokenizedExample> = chosen
                .iter()
                .map(|p| &p.a)
                .chain(chosen.iter().map(|p| &p.b))
                .collect();
            tokens += rows.iter().map(|r| r.tokens.len()).sum::<usize>();
            pairs += idx.len();
            let (logp, counts) = sequence_logps(&self.model, &rows, &self.device)?;
            let n = idx.len();
            let reference: Vec<f32> = idx
                .iter()
                .map(|&i| self.data.train_reference[i][0] as f32)
                .chain(idx.iter().map(|&i| self.data.train_reference[i][1] as f32))
                .collect();
            let mut ratio = (logp - Tensor::from_vec(reference, 2 * n, &self.device)?)?;
            if spec.loss.length_normalized() {
                let c: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
                ratio = (ratio / Tensor::from_vec(c, 2 * n, &self.device)?)?;
            }
            let h = (ratio.narrow(0, 0, n)? - ratio.narrow(0, n, n)?)?;
            let labels: Vec<f64> = chosen.iter().map(|p| p.p_a).collect();
            let weights: Vec<f32> = chosen.iter().map(|p| p.weight as f32).collect();
            let per_pair = pair_losses(&spec, &h, &labels)?;
            let part = ((per_pair * Tensor::from_vec(weights, n, &self.device)?)?.sum_all()?
                / total_weight.max(1e-12))?;
            let value = part.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(self.non_finite(step, "loss", value));
            }
            loss += value;
            let raw = ratio.detach().to_vec1::<f32>()?;
            for (i, &p) in labels.iter().enumerate() {
                if p != 0.5 {
                    let d = f64::from(raw[i]) - f64::from(raw[n + i]);
                    let d = if p > 0.5 { d } else { -d };
                    decided += 1;
                    correct += if d > 0.0 {
                        1.0
                    } else if d == 0.0 {
                        0.5
                    } else {
                        0.0
                    };
                    margin += spec.beta * d;
                }
            }
            grads.accumulate(self.params.vars(), self.model.backward(&part)?)?;
        }
        let grad_norm = grads.clip_global_norm(self.cfg.train.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(self.non_finite(step, "gradient norm", grad_norm));
        }
        self.opt.step(self.params.vars(), &grads, lr)?;
        self.state.step = step;
        let seconds = started.elapsed().as_secs_f64();
        self.state.history.push(DpoStepPoint {
            step,
            loss,
            accuracy: correct / decided.max(1) as f64,
            margin: margin / decided.max(1) as f64,
            grad_norm,
            lr,
            pairs,
            tokens,
            seconds,
        });
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

    /// Held-out metrics (`None` without eval pairs); recorded in the state.
    pub fn evaluate(&mut self) -> Result<Option<DpoEval>> {
        if self.data.eval.is_empty() {
            return Ok(None);
        }
        let t = &self.cfg.train;
        let policy = pair_logps(
            &self.model,
            &self.data.eval,
            t.batch_size,
            &self.device,
            |_| {},
        )?;
        let logps: Vec<PairLogps> = self
            .data
            .eval
            .iter()
            .zip(policy)
            .zip(&self.data.eval_reference)
            .map(|((p, policy), reference)| PairLogps {
                policy,
                reference: *reference,
                tokens: [p.a.num_targets(), p.b.num_targets()],
            })
            .collect();
        let labels: Vec<f64> = self.data.eval.iter().map(|p| p.p_a).collect();
        let weights: Vec<f64> = self.data.eval.iter().map(|p| p.weight).collect();
        let m = dpo_metrics(&self.cfg.spec(), self.state.step, &logps, &labels, &weights);
        let step = self.state.step;
        self.state.evals.retain(|e| e.step != step);
        self.state.evals.push(m.clone());
        Ok(Some(m))
    }

    /// Writes a resumable checkpoint (base weights, adapters, optimizer, state).
    pub fn save_checkpoint(&mut self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_dir_atomically(dir, |tmp| {
            self.params.write_checkpoint_files(tmp, extra_files)?;
            self.opt.save(&tmp.join(OPTIMIZER_FILE))?;
            resume::write_state(tmp, &self.state)
        })?;
        self.last_checkpoint = Some(dir.to_path_buf());
        Ok(())
    }

    /// Writes the trained policy (LoRA merged) to `dir`: a model folder any stage loads.
    pub fn save_final(&self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_dir_atomically(dir, |tmp| {
            self.params.write_final_files(tmp, extra_files)?;
            resume::write_state(tmp, &self.state)
        })
    }

    /// Trains to the end: held-out metrics before the first step (fresh runs), every
    /// `eval_every` steps and at the end; `train_log.csv` (its `eval_loss` column is the
    /// held-out pair loss), `eval_log.csv`, checkpoints on schedule, and `final/`.
    pub fn run(
        &mut self,
        out_dir: &Path,
        extra_files: ExtraFiles,
        observer: &mut dyn TrainObserver,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let mut log = CsvLog::open(&out_dir.join(TRAIN_LOG), self.state.step)?;
        let t = self.cfg.train.clone();
        if self.state.step == 0 {
            if let Some(m) = self.evaluate()? {
                observer.on_event(&TrainEvent::Eval {
                    step: 0,
                    loss: m.loss,
                });
            }
            self.write_eval_log(out_dir)?;
        }
        while !self.is_done() {
            let stats = self.train_step()?;
            observer.on_event(&TrainEvent::Step(&stats));
            let step = stats.step;
            let mut eval_loss = None;
            if (t.eval_every > 0 && step % t.eval_every == 0) || self.is_done() {
                if let Some(m) = self.evaluate()? {
                    eval_loss = Some(m.loss);
                    observer.on_event(&TrainEvent::Eval { step, loss: m.loss });
                }
                self.write_eval_log(out_dir)?;
            }
            log.append(&stats, eval_loss)?;
            if t.save_every > 0 && step % t.save_every == 0 {
                let dir = checkpoint::checkpoint_dir(out_dir, step);
                self.save_checkpoint(&dir, extra_files)?;
                observer.on_event(&TrainEvent::Checkpoint { step, path: &dir });
            }
        }
        let final_dir = out_dir.join(FINAL_DIR);
        self.save_final(&final_dir, extra_files)?;
        observer.on_event(&TrainEvent::Checkpoint {
            step: self.state.step,
            path: &final_dir,
        });
        Ok(final_dir)
    }

    fn write_eval_log(&self, out_dir: &Path) -> Result<()> {
        let mut text = String::from(
            "step,pairs,accuracy,margin,chosen_drift,rejected_drift,logp_accuracy,loss\n",
        );
        for e in &self.state.evals {
            text.push_str(&format!(
                "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}\n",
                e.step,
                e.pairs,
                e.accuracy,
                e.margin,
                e.chosen_drift,
                e.rejected_drift,
                e.logp_accuracy,
                e.loss
            ));
        }
        let path = out_dir.join(EVAL_LOG);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}
