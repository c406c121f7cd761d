//! `cai train sft`: the supervised stage of Constitutional AI (SL-CAI, Bai et al. 2022 §3.1).
//!
//! Reads revision records or TRL SFT rows, tokenizes them with the base model's chat template
//! (loss on response tokens only), holds out an eval set, fine-tunes with the training core
//! ([`crate::train::train_sft`]) and writes, into `--out`: `checkpoint-N/` and `final/` model
//! folders (loadable as `--model` by every stage), `train_log.csv`, `loss.svg` and
//! `manifest.json` (resolved config, data and base model sha256, losses, throughput).

/// The SFT data, in `train::sft_data` (PPO-ptx reads it too).
pub use crate::train::sft_data as data;

use crate::artifacts::{LOSS_PLOT, MANIFEST, TRAIN_LOG, WEIGHTS_FILE};
use crate::train::memory::{self, rows_per_pass, MemoryPlan};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::device::compute_device;
use crate::hash::{sha256_file, sha256_json};
use crate::llm::ModelInfo;
use crate::manifest::{now_unix, Manifest};
use crate::model_files::checkpoint::load_base;
use crate::model_files::weights::dtype_device;
use crate::model_files::ChatTokenizer;
use crate::plot::{line_chart, write_svg, LineSeries};
use crate::progress;
use crate::train::data::eval_loss;
use crate::train::resume::resume_point;
use crate::train::sft_data::{read_pairs, tokenize, RoundChoice};
use crate::train::{
    model_from_weights, train_sft, SftConfig, SftStart, TokenizedExample, TrainEvent,
};

/// Settings of `cai train sft`. Every field has a default; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftRunConfig {
    /// Base model: `default`, a GGUF file, a model folder or a Hugging Face id.
    pub model: String,
    /// Training data (required): `cai revise` output or TRL SFT rows.
    pub data: Option<PathBuf>,
    /// Target revision of `cai revise` records: `final`, `all` or a round number.
    pub round: RoundChoice,
    /// Output folder (default `runs/sft`).
    pub out: PathBuf,
    /// Fraction of the data held out when `eval` is not set (default 0.1).
    pub eval_split: f64,
    /// Held-out data file instead of a split.
    pub eval: Option<PathBuf>,
    /// Continue from the latest checkpoint in `out`.
    pub resume: bool,
    /// No progress bar.
    pub quiet: bool,
    /// Optimizer, schedule, batching and what is trained.
    pub train: SftConfig,
}

impl Default for SftRunConfig {
    fn default() -> Self {
        Self {
            model: "default".into(),
            data: None,
            round: RoundChoice::Final,
            out: PathBuf::from("runs/sft"),
            eval_split: 0.1,
            eval: None,
            resume: false,
            quiet: false,
            train: SftConfig::default(),
        }
    }
}

/// Outcome of a run, for the summary line.
#[derive(Debug, Clone)]
pub struct SftRunSummary {
    pub train_examples: usize,
    pub eval_examples: usize,
    pub steps: usize,
    pub eval_loss_before: Option<f64>,
    pub eval_loss_after: Option<f64>,
    pub tokens_per_s: f64,
    pub final_dir: PathBuf,
}

/// Runs `cai train sft`.
pub fn run(cfg: &SftRunConfig) -> Result<SftRunSummary> {
    let started = now_unix();
    let data = cfg
        .data
        .as_deref()
        .context("no training data: pass --data FILE (cai revise output or TRL SFT rows)")?;
    let tok = ChatTokenizer::open(&cfg.model)?;
    let (mut train, mut eval) = (load_examples(data, cfg, &tok)?, Vec::new());
    match &cfg.eval {
        Some(path) => eval = load_examples(path, cfg, &tok)?,
        None => {
            let n_eval = (train.len() as f64 * cfg.eval_split).floor() as usize;
            if n_eval > 0 && n_eval < train.len() {
                let mut rng = ChaCha8Rng::seed_from_u64(cfg.train.seed);
                train.shuffle(&mut rng);
                eval = train.split_off(train.len() - n_eval);
            }
        }
    }

    let (start, model_sha, before) = match resume_point(&cfg.out, cfg.resume)? {
        Some(checkpoint) => {
            let sha = sha256_file(&checkpoint.join(WEIGHTS_FILE)).ok();
            let start = SftStart::Resume {
                checkpoint,
                device: compute_device()?,
                config: cfg.train.clone(),
            };
            (start, sha, None)
        }
        None => {
            let (model_config, weights, sha) = load_base(&cfg.model)?;
            let t = &cfg.train;
            let longest = train.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
            let longest = longest.min(t.max_len);
            let plan = MemoryPlan {
                model: &model_config,
                trainable: &t.trainable,
                rows: rows_per_pass(t.batch_size, longest, t.max_batch_tokens),
                tokens_per_row: longest,
                frozen_models: 0,
                one_update: t.total_steps(train.len()) <= 1,
                compute: t.dtype.compute_dtype(&dtype_device(&weights)?.1)?,
            };
            memory::check_fits(&plan, "train sft")?;
            let before = match eval.is_empty() {
                true => None,
                false => {
                    let (_, device) = dtype_device(&weights)?;
                    let model = model_from_weights(&model_config, &weights)?
                        .with_compute_dtype(cfg.train.dtype.compute_dtype(&device)?)?;
                    Some(eval_loss(&model, &eval, cfg.train.batch_size, &device)?.0)
                }
            };
            let start = SftStart::Fresh {
                model_config,
                weights,
                config: cfg.train.clone(),
            };
            (start, sha, before)
        }
    };
    if let Some(loss) = before {
        eprintln!(
            "cai: train sft: held-out loss before training {loss:.4} ({} examples)",
            eval.len()
        );
    }

    let total = cfg.train.total_steps(train.len()) as u64;
    let (warmup, lr) = (cfg.train.warmup_steps, cfg.train.lr);
    if let Some(w) = crate::train::log::warmup_warning(warmup, total as usize, lr) {
        eprintln!("cai: warning: train sft: {w}");
    }
    let pb = progress::bar(total, 0, "train", cfg.quiet);
    let (mut tokens, mut seconds) = (0usize, 0f64);
    let t0 = Instant::now();
    let mut observer = |e: &TrainEvent| match e {
        TrainEvent::Step(s) => {
            tokens += s.tokens;
            seconds += s.tokens as f64 / s.tokens_per_s.max(1e-9);
            pb.set_length(s.total_steps as u64);
            pb.set_position(s.step as u64);
            pb.set_message(format!(
                "loss {:.4} · {:.0} tokens/s",
                s.loss, s.tokens_per_s
            ));
        }
        TrainEvent::Eval { step, loss } => {
            pb.suspend(|| eprintln!("cai: train sft: step {step}: held-out loss {loss:.4}"));
        }
        TrainEvent::Checkpoint { .. } => {}
    };
    let files = tok.folder_files()?;
    let extra: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (*n, b.clone())).collect();
    let summary = train_sft(start, &train, &eval, &cfg.out, &extra, &mut observer)
        .with_context(|| format!("training into {}", cfg.out.display()))?;
    pb.finish_and_clear();
    if summary.truncated > 0 {
        eprintln!(
            "cai: warning: {} of {} training examples were longer than max_len {} tokens and \
             were cut",
            summary.truncated,
            train.len(),
            cfg.train.max_len
        );
    }

    let log = cfg.out.join(TRAIN_LOG);
    write_loss_chart(&log, before, &cfg.out.join(LOSS_PLOT))?;
    let tokens_per_s = tokens as f64 / seconds.max(1e-9);
    let data_sha = sha256_file(data)?;
    let config = serde_json::to_value(cfg)?;
    let manifest = Manifest {
        cai_version: env!("CARGO_PKG_VERSION").to_string(),
        command: "train sft".into(),
        fingerprint: sha256_json(&[&config, &json!(data_sha), &json!(model_sha)]),
        config,
        constitution: None,
        model: ModelInfo {
            backend: "local".into(),
            name: cfg.model.clone(),
            sha256: model_sha,
            context: tok.context,
        },
        started_unix: started,
        finished_unix: Some(now_unix()),
        stats: json!({
            "data_sha256": data_sha,
            "train_examples": train.len(),
            "eval_examples": eval.len(),
            "truncated": summary.truncated,
            "dropped": summary.dropped,
            "steps": summary.steps,
            "final_loss": summary.final_loss,
            "eval_loss_before": before,
            "eval_loss_after": summary.final_eval_loss,
            "train_tokens": tokens,
            "train_tokens_per_s": tokens_per_s,
            "seconds": t0.elapsed().as_secs_f64(),
        }),
    };
    let path = cfg.out.join(MANIFEST);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(SftRunSummary {
        train_examples: train.len(),
        eval_examples: eval.len(),
        steps: summary.steps,
        eval_loss_before: before,
        eval_loss_after: summary.final_eval_loss,
        tokens_per_s,
        final_dir: summary.final_dir,
    })
}

/// Reads and tokenizes one data file; an empty result is an error.
fn load_examples(
    path: &Path,
    cfg: &SftRunConfig,
    tok: &ChatTokenizer,
) -> Result<Vec<TokenizedExample>> {
    let set = read_pairs(path, cfg.round)?;
    if set.skipped > 0 {
        eprintln!(
            "cai: warning: {}: {} revise record(s) have no usable revision for --round {}",
            path.display(),
            set.skipped,
            cfg.round
        );
    }
    ensure!(
        !set.pairs.is_empty(),
        "{}: no training examples (empty file, or no record has round {})",
        path.display(),
        cfg.round
    );
    let tokenized = tokenize(&set.pairs, tok, cfg.train.max_len)?;
    if tokenized.too_long > 0 {
        eprintln!(
            "cai: warning: {}: {} of {} examples are longer than max_len {} tokens and will be cut",
            path.display(),
            tokenized.too_long,
            tokenized.examples.len(),
            cfg.train.max_len
        );
    }
    Ok(tokenized.examples)
}

/// Train and held-out loss against step, from `train_log.csv`.
fn write_loss_chart(log: &Path, before: Option<f64>, svg: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let (mut train, mut eval) = (Vec::new(), Vec::from_iter(before.map(|l| (0.0, l))));
    for (i, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let num = |k: usize| cols.get(k).and_then(|s| s.parse::<f64>().ok());
        let step = num(0).with_context(|| format!("{}:{}: no step", log.display(), i + 1))?;
        if let Some(loss) = num(2) {
            train.push((step, loss));
        }
        if let Some(loss) = num(3) {
            eval.push((step, loss));
        }
    }
    let mut series = vec![LineSeries::new("train", train)];
    if !eval.is_empty() {
        series.push(LineSeries::new("held-out", eval));
    }
    write_svg(
        svg,
        &line_chart("SFT loss", "step", "loss (nats/token)", &series),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_chart_reads_the_log() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("train_log.csv");
        std::fs::write(
            &log,
            "step,epoch,loss,eval_loss,lr,grad_norm,tokens_per_s\n1,0,2.5,,1e-4,1.0,100.0\n\
             2,0,2.0,1.9,1e-4,1.0,100.0\n",
        )?;
        let svg = dir.path().join("loss.svg");
        write_loss_chart(&log, Some(2.7), &svg)?;
        let text = std::fs::read_to_string(&svg)?;
        crate::plot::assert_well_formed(&text);
        assert!(text.contains("held-out") && text.contains("SFT loss"));
        Ok(())
    }
}
