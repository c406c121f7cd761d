//! `cai train rm`: reward-model training on AI and/or human preference labels
//! (Bai et al. 2022 §4.1; Lee et al. 2023 §2.2 "distilled RLAIF"), with held-out human
//! evaluation, metrics and plots. `cai score` lives in [`crate::stages::rm::score`].

pub mod score;

use crate::artifacts::{ACCURACY_PLOT, LOSS_PLOT, METRICS, REWARDS_PLOT};
use crate::train::memory::{self, rows_per_pass, MemoryPlan};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::model_files::ChatTokenizer;
use crate::model_files::ModelSpec;
use crate::plot::{self, HistogramSeries, LineSeries};
use crate::train::log::warmup_warning;
use crate::train::resume::resume_point;
use crate::train::reward::{RewardModelInfo, MARKER_FILE};
use crate::train::reward_data::{read_source, tokenize_pairs, DataSource};
use crate::train::reward_trainer::{RewardTrainConfig, RewardTrainer, RewardTrainerState};
use crate::train::split::{split_held_out, HeldOut};
use crate::train::{SftConfig, TrainEvent};

/// Settings of `cai train rm`. Every field has a default; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainRmConfig {
    /// Backbone model (default `default`).
    pub model: String,
    /// Training sources with weights: `[{path: labels.jsonl, weight: 1.0}]`.
    pub data: Vec<DataSource>,
    /// Held-out labelled pairs (training pairs of the same conversations are dropped);
    /// without it, whole training conversations holding about `eval_fraction` of the pairs
    /// are held out at random by `train.seed`.
    pub eval: Option<PathBuf>,
    /// See `eval` (default 0.1).
    pub eval_fraction: f64,
    /// Round labels to 0/1 (default false).
    pub hard: bool,
    /// Output folder (default `runs/rm`).
    pub out: PathBuf,
    /// Optimizer, steps, batch, trainable part, seed, `max_len`, cadence (see SftConfig);
    /// reward-model defaults: lr 1e-5, batch_size 8, grad_accum 1, max_len 512.
    pub train: SftConfig,
    /// Bradley–Terry margin (default 0).
    pub margin: f64,
    /// Reward-centering coefficient (default 0).
    pub center_coef: f64,
    /// Calibration bins (default 10).
    pub ece_bins: usize,
    /// No progress bar.
    pub quiet: bool,
    /// Continue from the latest checkpoint in `out` (flag only).
    #[serde(skip)]
    pub resume: bool,
}

impl Default for TrainRmConfig {
    fn default() -> Self {
        let rm = RewardTrainConfig::default();
        Self {
            model: "default".into(),
            data: Vec::new(),
            eval: None,
            eval_fraction: 0.1,
            hard: false,
            out: PathBuf::from("runs/rm"),
            train: rm.train,
            margin: rm.margin,
            center_coef: rm.center_coef,
            ece_bins: rm.ece_bins,
            quiet: false,
            resume: false,
        }
    }
}

impl TrainRmConfig {
    fn trainer_config(&self) -> RewardTrainConfig {
        RewardTrainConfig {
            train: self.train.clone(),
            margin: self.margin,
            center_coef: self.center_coef,
            ece_bins: self.ece_bins,
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RmSummary {
    pub train_pairs: usize,
    pub eval_pairs: usize,
    /// Where the held-out pairs came from and what they hold.
    pub held_out: HeldOut,
    pub skipped_rows: usize,
    pub truncated_sequences: usize,
    pub steps: usize,
    pub final_dir: PathBuf,
    pub eval: Option<crate::train::reward::RewardEval>,
    pub pairs_per_s: f64,
    pub tokens_per_s: f64,
}

/// Tokenizer files of a model folder, copied into every reward-model folder.
fn tokenizer_files(model: &str) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut out = Vec::new();
    if let ModelSpec::Folder(d) = ModelSpec::resolve(model)? {
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            let p = d.join(name);
            if p.is_file() {
                out.push((
                    name,
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
                ));
            }
        }
    }
    Ok(out)
}

/// Runs `cai train rm`.
pub fn run(cfg: &TrainRmConfig) -> Result<RmSummary> {
    let tok = ChatTokenizer::open(&cfg.model)?;
    let mut text_pairs = Vec::new();
    let mut skipped = 0;
    for src in &cfg.data {
        let (pairs, s) = read_source(src, cfg.hard)?;
        text_pairs.extend(pairs);
        skipped += s;
    }
    let eval_file = match &cfg.eval {
        Some(path) => {
            let src = DataSource {
                path: path.clone(),
                weight: 1.0,
            };
            let (eval, s) = read_source(&src, false)?;
            skipped += s;
            Some((path.as_path(), eval))
        }
        None => None,
    };
    let split = split_held_out(text_pairs, eval_file, cfg.eval_fraction, cfg.train.seed);
    eprintln!("cai: train rm: {}", split.held_out.describe());
    let (train_text, eval_text) = (split.train, split.eval);
    let max_len = cfg.train.max_len;
    let (train, cut_a) = tokenize_pairs(&tok, &train_text, max_len)?;
    let (eval, cut_b) = tokenize_pairs(&tok, &eval_text, max_len)?;
    let device = crate::device::compute_device()?;
    let base_model = match ModelSpec::resolve(&cfg.model)? {
        ModelSpec::GgufFile(p) | ModelSpec::Folder(p) => std::path::absolute(p)?,
    };
    let mut trainer = match resume_point(&cfg.out, cfg.resume)? {
        Some(dir) => {
            eprintln!("cai: train rm: resuming from {}", dir.display());
            let settings = cfg.trainer_config();
            RewardTrainer::resume(&dir, train.clone(), eval.clone(), &device, settings)?
        }
        None => {
            // The same loader as sft, dpo and ppo: one `--model DIR` is one set of weights.
            let (model_cfg, weights, _) = crate::model_files::checkpoint::load_base(&cfg.model)?;
            let t = &cfg.train;
            let longest = train.iter().map(|p| p.a.len().max(p.b.len())).max();
            let longest = longest.unwrap_or(0).min(t.max_len);
            let plan = MemoryPlan {
                model: &model_cfg,
                trainable: &t.trainable,
                rows: 2 * rows_per_pass(t.batch_size, 2 * longest, t.max_batch_tokens),
                tokens_per_row: longest,
                frozen_models: 0,
                one_update: t.max_steps == Some(1),
                compute: t.dtype.compute_dtype(&device)?,
            };
            memory::check_fits(&plan, "train rm")?;
            RewardTrainer::new(
                &model_cfg,
                weights,
                train.clone(),
                eval.clone(),
                cfg.trainer_config(),
            )?
        }
    };
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let resolved = cfg.out.join("rm_config.yaml");
    std::fs::write(&resolved, serde_yaml::to_string(cfg)?)
        .with_context(|| format!("writing {}", resolved.display()))?;

    let hidden = trainer.model().0.config().hidden_size;
    let marker = RewardModelInfo::new(hidden, &base_model.to_string_lossy()).to_bytes();
    let mut extra = tokenizer_files(&cfg.model)?;
    extra.push((MARKER_FILE, marker));
    let state = trainer.state();
    if let Some(w) = warmup_warning(cfg.train.warmup_steps, state.total_steps, cfg.train.lr) {
        eprintln!("cai: warning: train rm: {w}");
    }
    let pb = crate::progress::bar(
        state.total_steps as u64,
        state.step as u64,
        "train rm",
        cfg.quiet,
    );
    let mut observer = |e: &TrainEvent| match e {
        TrainEvent::Step(s) => {
            pb.set_position(s.step as u64);
            pb.set_message(format!("loss {:.4}", s.loss));
        }
        TrainEvent::Eval { step, loss } => {
            pb.suspend(|| eprintln!("cai: train rm: step {step}: held-out pair loss {loss:.4}"))
        }
        TrainEvent::Checkpoint { .. } => {}
    };
    let final_dir = trainer.run(&cfg.out, &extra, &mut observer)?;
    pb.finish_and_clear();
    let state = trainer.state().clone();
    let (pairs, tokens, seconds) = state.history.iter().fold((0, 0, 0.0), |acc, p| {
        (acc.0 + p.pairs, acc.1 + p.tokens, acc.2 + p.seconds)
    });
    let summary = RmSummary {
        train_pairs: train.len(),
        eval_pairs: eval.len(),
        held_out: split.held_out,
        skipped_rows: skipped,
        truncated_sequences: cut_a + cut_b,
        steps: state.step,
        final_dir,
        eval: trainer.last_eval().cloned(),
        pairs_per_s: pairs as f64 / f64::max(seconds, 1e-9),
        tokens_per_s: tokens as f64 / f64::max(seconds, 1e-9),
    };
    write_report(&cfg.out, &state, &summary)?;
    Ok(summary)
}

/// `metrics.json`, `loss.svg`, `accuracy.svg` and `rewards.svg` in `out`.
fn write_report(out: &Path, state: &RewardTrainerState, s: &RmSummary) -> Result<()> {
    let path = out.join(METRICS);
    std::fs::write(&path, serde_json::to_string_pretty(s)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let train_loss = state.history.iter().map(|p| (p.step as f64, p.loss));
    let eval_loss = state.evals.iter().map(|e| (e.step as f64, e.loss));
    let loss = plot::line_chart(
        "Reward-model loss",
        "step",
        "pair loss",
        &[
            LineSeries::new("train", train_loss.collect()),
            LineSeries::new("held-out", eval_loss.collect()),
        ],
    );
    plot::write_svg(&out.join(LOSS_PLOT), &loss)?;
    let train_acc = state.history.iter().map(|p| (p.step as f64, p.accuracy));
    let eval_acc = state.evals.iter().map(|e| (e.step as f64, e.accuracy));
    let acc = plot::line_chart(
        "Reward-model accuracy (r_chosen > r_rejected)",
        "step",
        "accuracy",
        &[
            LineSeries::new("train batch", train_acc.collect()),
            LineSeries::new("held-out", eval_acc.collect()),
        ],
    );
    plot::write_svg(&out.join(ACCURACY_PLOT), &acc)?;
    if let Some(e) = &s.eval {
        let hist = plot::histogram(
            "Held-out rewards",
            "reward",
            &[
                HistogramSeries {
                    name: "chosen".into(),
                    values: e.rewards.iter().map(|r| r.0).collect(),
                },
                HistogramSeries {
                    name: "rejected".into(),
                    values: e.rewards.iter().map(|r| r.1).collect(),
                },
            ],
            30,
            None,
        );
        plot::write_svg(&out.join(REWARDS_PLOT), &hist)?;
    }
    Ok(())
}
