//! Reward-model training loop (Bai et al. 2022 §4.1; Lee et al. 2023 §2.2): the SFT
//! core's parameters, AdamW, schedule, gradient clipping, checkpoints and CSV log, with
//! the pairwise loss of [`reward_loss`](super::reward_loss) on a scalar head.
//!
//! A step takes `grad_accum` micro-batches of whole conversations (see
//! [`group_batches_by`](super::reward_data::group_batches_by)) and averages the weighted pair losses over the step's total
//! weight. Everything a step depends on is in the checkpoint (weights, head, moments,
//! position; the batches of an epoch are a pure function of seed and epoch), so a resumed
//! run repeats the uninterrupted one.

use super::data::split_by_tokens;
use super::log::{CsvLog, StepStats, TrainEvent, TrainObserver};
use super::model::{CausalLm, Llama};
use super::optim::{AdamW, Gradients, LrSchedule};
use super::params::ParamStore;
use super::resume;
use super::reward::{batch_rewards, evaluate_pairs, pair_correct, RewardEval, RewardHead};
use super::reward_data::{EpochBatches, PairBatch, TokenPair};
use super::reward_loss::{batch_loss, LossSettings};
use super::sft::{NonFiniteError, SftConfig};
use super::{LlamaConfig, Weights};
use crate::artifacts::OPTIMIZER_FILE;
use crate::artifacts::{EVAL_LOG, FINAL_DIR, TRAIN_LOG};
use crate::hash::Fnv1a;
use crate::model_files::checkpoint::{self, ExtraFiles};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Var};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of a reward-model run. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardTrainConfig {
    /// Optimizer, schedule, steps, `batch_size` (pairs per micro-batch), accumulation,
    /// trainable part, seed, `max_len`, eval/save cadence: as for SFT.
    pub train: SftConfig,
    /// Bradley–Terry margin subtracted from the reward difference (default 0).
    pub margin: f64,
    /// Reward-centering coefficient `c` of `c·(r_a + r_b)²` (default 0).
    pub center_coef: f64,
    /// Calibration bins of the held-out ECE (default 10).
    pub ece_bins: usize,
}

impl Default for RewardTrainConfig {
    fn default() -> Self {
        Self {
            train: SftConfig {
                lr: 1e-5,
                batch_size: 8,
                grad_accum: 1,
                max_len: 512,
                ..SftConfig::default()
            },
            margin: 0.0,
            center_coef: 0.0,
            ece_bins: 10,
        }
    }
}

/// One step's training loss and accuracy, for curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPoint {
    pub step: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// Pairs and real tokens of the step, and its seconds (forward, backward, update).
    pub pairs: usize,
    pub tokens: usize,
    pub seconds: f64,
}

/// One held-out evaluation, for curves and `eval_log.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    pub accuracy: f64,
    pub ece: Option<f64>,
    pub loss: f64,
}

/// Where the run stands; saved as `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardTrainerState {
    pub step: usize,
    pub epoch: usize,
    /// Index of the next micro-batch of the epoch.
    pub cursor: usize,
    pub total_steps: usize,
    /// FNV-1a hash of the tokenized training pairs, checked on resume.
    pub data_fingerprint: String,
    pub history: Vec<StepPoint>,
    pub evals: Vec<EvalPoint>,
    pub config: RewardTrainConfig,
}

/// The reward-model training loop (see the module docs).
pub struct RewardTrainer {
    cfg: RewardTrainConfig,
    params: ParamStore,
    head: RewardHead,
    vars: Vec<(String, Var)>,
    model: Llama,
    opt: AdamW,
    schedule: LrSchedule,
    train: Vec<TokenPair>,
    eval: Vec<TokenPair>,
    batches: EpochBatches,
    state: RewardTrainerState,
    last_eval: Option<RewardEval>,
    last_checkpoint: Option<PathBuf>,
}

impl RewardTrainer {
    /// A fresh run on backbone `weights` (f32) with a new head.
    pub fn new(
        model_config: &LlamaConfig,
        weights: Weights,
        train: Vec<TokenPair>,
        eval: Vec<TokenPair>,
        cfg: RewardTrainConfig,
    ) -> Result<Self> {
        let (_, device) = crate::model_files::weights::dtype_device(&weights)?;
        let t = &cfg.train;
        let params = ParamStore::fresh(model_config, weights, t.trainable.clone(), t.seed)?;
        let head = RewardHead::init(model_config.hidden_size, t.seed, &device)?;
        let opt = AdamW::new(t.adamw());
        Self::assemble(params, head, opt, train, eval, cfg, None)
    }

    /// Continues the run saved in checkpoint folder `dir` on the same data, with the same
    /// settings `cfg` but for its length ([`resume::check_settings`]).
    pub fn resume(
        dir: &Path,
        train: Vec<TokenPair>,
        eval: Vec<TokenPair>,
        device: &Device,
        cfg: RewardTrainConfig,
    ) -> Result<Self> {
        let state: RewardTrainerState = resume::read_state(dir)?;
        resume::check_settings(dir, &state.config, &cfg)?;
        let params = ParamStore::restore(dir, cfg.train.trainable.clone(), device)?;
        let head = RewardHead::load(dir, params.config().hidden_size, device)?;
        let opt = AdamW::load(cfg.train.adamw(), &dir.join(OPTIMIZER_FILE), device)?;
        ensure!(
            opt.step_count() as usize == state.step,
            "{}: optimizer at step {} but trainer state at {}",
            dir.display(),
            opt.step_count(),
            state.step
        );
        let mut trainer = Self::assemble(params, head, opt, train, eval, cfg, Some(state))?;
        trainer.last_checkpoint = Some(dir.to_path_buf());
        Ok(trainer)
    }

    fn assemble(
        params: ParamStore,
        head: RewardHead,
        opt: AdamW,
        train: Vec<TokenPair>,
        eval: Vec<TokenPair>,
        cfg: RewardTrainConfig,
        saved: Option<RewardTrainerState>,
    ) -> Result<Self> {
        cfg.train.validate()?;
        ensure!(
            !train.is_empty(),
            "no training pairs (every pair is held out or was dropped as a tie)"
        );
        let t = &cfg.train;
        let keys = train.iter().map(|p| p.group.clone()).collect();
        let batches = EpochBatches::new(keys, t.batch_size, t.seed, 0);
        let fingerprint = pairs_fingerprint(&train);
        let total_steps = t
            .max_steps
            .unwrap_or_else(|| batches.in_epochs(t.epochs).div_ceil(t.grad_accum.max(1)));
        let state = match saved {
            Some(state) => {
                ensure!(
                    state.data_fingerprint == fingerprint,
                    "the training pairs differ from those of the checkpoint"
                );
                // The length may differ from the checkpoint's (see `resume`).
                RewardTrainerState {
                    total_steps,
                    config: cfg.clone(),
                    ..state
                }
            }
            None => RewardTrainerState {
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
        let mut vars = params.vars().to_vec();
        vars.extend(head.vars());
        Ok(Self {
            model: params.training_model(cfg.train.dtype)?,
            cfg,
            params,
            head,
            vars,
            opt,
            schedule,
            train,
            eval,
            batches,
            state,
            last_eval: None,
            last_checkpoint: None,
        })
    }

    /// Position, history and settings of the run.
    pub fn state(&self) -> &RewardTrainerState {
        &self.state
    }

    /// The last held-out evaluation.
    pub fn last_eval(&self) -> Option<&RewardEval> {
        self.last_eval.as_ref()
    }

    /// The backbone's parameters (trainable and frozen).
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The backbone and head being trained.
    pub fn model(&self) -> (&Llama, &RewardHead) {
        (&self.model, &self.head)
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

    /// Runs one optimizer step; returns its statistics and training accuracy.
    pub fn train_step(&mut self) -> Result<(StepStats, f64)> {
        let started = Instant::now();
        let step = self.state.step + 1;
        let epoch = self.state.epoch;
        let lr = self.schedule.lr(step);
        let device = self.model.device().clone();
        let mut batches = Vec::with_capacity(self.cfg.train.grad_accum);
        for _ in 0..self.cfg.train.grad_accum {
            let idx = self
                .batches
                .next(&mut self.state.epoch, &mut self.state.cursor);
            let pairs: Vec<&TokenPair> = idx.iter().map(|&i| &self.train[i]).collect();
            // The pairs of a conversation are adjacent (see `group_batches_by`) and stay together.
            let mut units: Vec<(usize, usize)> = Vec::new();
            let mut starts = Vec::new();
            for (k, p) in pairs.iter().enumerate() {
                let len = p.a.len().max(p.b.len());
                match k > 0 && pairs[k - 1].group == p.group {
                    true => {
                        let last = units.last_mut().expect("a unit was started");
                        *last = (last.0 + 2, last.1.max(len));
                    }
                    false => {
                        units.push((2, len));
                        starts.push(k);
                    }
                }
            }
            starts.push(pairs.len());
            for part in split_by_tokens(&units, self.cfg.train.max_batch_tokens) {
                let range = starts[part.start]..starts[part.end];
                batches.push(PairBatch::new(&pairs[range], &device)?);
            }
        }
        let total_weight: f64 = batches.iter().map(|b| b.total_weight).sum();
        let settings = LossSettings {
            margin: self.cfg.margin,
            center_coef: self.cfg.center_coef,
        };
        let (mut loss, mut correct, mut decided) = (0f64, 0f64, 0usize);
        let mut grads = Gradients::new();
        for batch in &batches {
            let r = batch_rewards(&self.model, &self.head, batch)?;
            let n = batch.num_pairs;
            let (ra, rb) = (r.narrow(0, 0, n)?, r.narrow(0, n, n)?);
            let part = (batch_loss(&ra, &rb, &batch.p_a, &batch.weight, settings)?
                / total_weight.max(1e-12))?;
            let value = part.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(self.non_finite(step, "loss", value));
            }
            loss += value;
            let (ra, rb) = (ra.to_vec1::<f32>()?, rb.to_vec1::<f32>()?);
            for (i, p) in batch.p_a.to_vec1::<f32>()?.into_iter().enumerate() {
                let (r_a, r_b) = (f64::from(ra[i]), f64::from(rb[i]));
                if let Some(score) = pair_correct(r_a, r_b, f64::from(p)) {
                    decided += 1;
                    correct += score;
                }
            }
            grads.accumulate(&self.vars, self.model.backward(&part)?)?;
        }
        let grad_norm = grads.clip_global_norm(self.cfg.train.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(self.non_finite(step, "gradient norm", grad_norm));
        }
        self.opt.step(&self.vars, &grads, lr)?;
        self.state.step = step;
        let accuracy = correct / decided.max(1) as f64;
        let tokens: usize = batches.iter().map(|b| b.num_tokens).sum();
        let seconds = started.elapsed().as_secs_f64();
        self.state.history.push(StepPoint {
            step,
            loss,
            accuracy,
            pairs: batches.iter().map(|b| b.num_pairs).sum(),
            tokens,
            seconds,
        });
        let stats = StepStats {
            step,
            total_steps: self.state.total_steps,
            epoch,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
        };
        Ok((stats, accuracy))
    }

    /// Held-out metrics (`None` without eval pairs); recorded in the history.
    pub fn evaluate(&mut self) -> Result<Option<&RewardEval>> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        let t = &self.cfg.train;
        let m = evaluate_pairs(
            &self.model,
            &self.head,
            &self.eval,
            t.batch_size,
            self.cfg.ece_bins,
        )?;
        let step = self.state.step;
        self.state.evals.retain(|e| e.step != step);
        self.state.evals.push(EvalPoint {
            step,
            accuracy: m.accuracy,
            ece: m.ece,
            loss: m.loss,
        });
        self.last_eval = Some(m);
        Ok(self.last_eval.as_ref())
    }

    /// Writes a resumable checkpoint (base weights, adapters, head, optimizer, state).
    pub fn save_checkpoint(&mut self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_dir_atomically(dir, |tmp| {
            self.params.write_checkpoint_files(tmp, extra_files)?;
            self.head.save(tmp)?;
            self.opt.save(&tmp.join(OPTIMIZER_FILE))?;
            resume::write_state(tmp, &self.state)
        })?;
        self.last_checkpoint = Some(dir.to_path_buf());
        Ok(())
    }

    /// Writes the trained reward model (LoRA merged) with its head to `dir`.
    pub fn save_final(&self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_dir_atomically(dir, |tmp| {
            self.params.write_final_files(tmp, extra_files)?;
            self.head.save(tmp)?;
            resume::write_state(tmp, &self.state)
        })
    }

    /// Trains to the end: `train_log.csv` (its `eval_loss` column is the held-out pair
    /// loss), `eval_log.csv`, evaluations and checkpoints on schedule, and `final/`.
    /// `extra_files` (tokenizer files, the reward-model marker) go into every folder.
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
        while !self.is_done() {
            let (stats, _) = self.train_step()?;
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
        if self.last_eval.is_none() {
            self.evaluate()?;
            self.write_eval_log(out_dir)?;
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
        let mut text = String::from("step,accuracy,ece,loss\n");
        for e in &self.state.evals {
            let ece = e.ece.map(|x| format!("{x:.6}")).unwrap_or_default();
            text.push_str(&format!(
                "{},{:.6},{ece},{:.6}\n",
                e.step, e.accuracy, e.loss
            ));
        }
        let path = out_dir.join(EVAL_LOG);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// FNV-1a hash of the pairs' tokens, labels and weights, as 16 hex digits.
fn pairs_fingerprint(pairs: &[TokenPair]) -> String {
    let mut hash = Fnv1a::default();
    let mut feed = |x: u64| hash.write_u64(x);
    for p in pairs {
        for seq in [&p.a, &p.b] {
            feed(seq.len() as u64);
            seq.iter().for_each(|&t| feed(u64::from(t)));
        }
        feed(p.p_a.to_bits());
        feed(p.weight.to_bits());
        p.group.bytes().for_each(|b| feed(u64::from(b)));
    }
    hash.hex()
}
