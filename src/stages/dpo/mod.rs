//! `cai train dpo`: direct preference optimisation (Rafailov et al. 2023) of a policy on AI
//! labels (soft `p_a`), human pairs and SL-CAI pairs from `cai revise` (the final revision
//! preferred to the initial answer, as in Hugging Face's "Constitutional AI with open LLMs"
//! recipe), against a frozen reference whose log-probabilities are computed once and kept in
//! the output folder.
//!
//! Writes into `--out`: `reference_logps.json`, `checkpoint-N/`, `final/` (a model folder any
//! stage loads as `--model`), `train_log.csv`, `eval_log.csv`, `metrics.json`,
//! `manifest.json`, `dpo_config.yaml`, and `loss.svg`, `accuracy.svg`, `rewards.svg`.

pub mod pairs;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::artifacts::{
    ACCURACY_PLOT, ADAPTER_CONFIG_FILE, CONFIG_FILE, LOSS_PLOT, MANIFEST, METRICS, OPTIMIZER_FILE,
    REWARDS_PLOT, WEIGHTS_FILE,
};
use crate::device::compute_device;
use crate::hash::{sha256_file, sha256_files, sha256_json};
use crate::llm::ModelInfo;
use crate::manifest::{now_unix, Manifest};
use crate::model_files::checkpoint::load_base;
use crate::model_files::ChatTokenizer;
use crate::model_files::ModelSpec;
use crate::plot::{self, LineSeries};
use crate::stages::dpo::pairs::{read_dpo_source, tokenize_dpo_pairs, DataCounts};
use crate::train::dpo_data::{pair_logps, pairs_fingerprint, DpoPair};
use crate::train::dpo_loss::DpoLoss;
use crate::train::dpo_metrics::DpoEval;
use crate::train::dpo_trainer::{DpoData, DpoTrainConfig, DpoTrainer, DpoTrainerState};
use crate::train::log::warmup_warning;
use crate::train::resume::resume_point;
use crate::train::reward_data::DataSource;
use crate::train::split::{split_held_out, HeldOut};
use crate::train::{model_from_weights, SftConfig, TrainEvent};

/// File of the reference log-probabilities in the output folder.
pub const REFERENCE_FILE: &str = crate::artifacts::REFERENCE_LOGPS;

/// Settings of `cai train dpo`. Every field has a default; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainDpoConfig {
    /// Starting policy (default `default`).
    pub model: String,
    /// Frozen reference (default: the starting policy).
    pub reference: Option<String>,
    /// Training sources with weights: `[{path: labels.jsonl, weight: 1.0}]`.
    pub data: Vec<DataSource>,
    /// Held-out pairs (training pairs of the same conversations are dropped); without it,
    /// whole training conversations holding about `eval_fraction` of the pairs are held out
    /// at random by `train.seed`.
    pub eval: Option<PathBuf>,
    /// See `eval` (default 0.1).
    pub eval_fraction: f64,
    /// Output folder (default `runs/dpo`).
    pub out: PathBuf,
    /// Optimizer, steps, batch, trainable part, seed, `max_len`, cadence (see SftConfig);
    /// DPO defaults: lr 5e-6, batch_size 4, grad_accum 2, max_len 512, eval_every 25,
    /// save_every 100.
    pub train: SftConfig,
    /// `sigmoid` (default), `cdpo`, `robust`, `ipo` or `hinge`.
    pub loss: DpoLoss,
    /// β (default 0.1).
    pub beta: f64,
    /// Label smoothing ε: `cdpo`'s target `ε + (1 − 2ε)·p`, `robust`'s flip rate (default 0;
    /// refused by sigmoid, ipo and hinge, which would ignore it).
    pub label_smoothing: f64,
    /// No progress bar.
    pub quiet: bool,
    /// Continue from the latest checkpoint in `out` (flag only).
    #[serde(skip)]
    pub resume: bool,
}

impl Default for TrainDpoConfig {
    fn default() -> Self {
        let d = DpoTrainConfig::default();
        Self {
            model: "default".into(),
            reference: None,
            data: Vec::new(),
            eval: None,
            eval_fraction: 0.1,
            out: PathBuf::from("runs/dpo"),
            train: d.train,
            loss: d.loss,
            beta: d.beta,
            label_smoothing: d.label_smoothing,
            quiet: false,
            resume: false,
        }
    }
}

impl TrainDpoConfig {
    /// Rejects settings the trainer cannot use.
    pub fn validate(&self) -> Result<()> {
        self.trainer_config().validate()
    }

    fn trainer_config(&self) -> DpoTrainConfig {
        DpoTrainConfig {
            train: self.train.clone(),
            loss: self.loss,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
        }
    }

    fn reference_model(&self) -> &str {
        self.reference.as_deref().unwrap_or(&self.model)
    }
}

/// `reference_logps.json`: the reference's summed response log-probabilities of every pair,
/// tied to the reference weights and the tokenized pairs by hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReferenceFile {
    reference: String,
    reference_sha256: Option<String>,
    /// The dtype the reference computed in (files from before mixed precision: f32).
    #[serde(default = "f32_name")]
    dtype: String,
    train_fingerprint: String,
    eval_fingerprint: String,
    train: Vec<[f64; 2]>,
    eval: Vec<[f64; 2]>,
}

fn f32_name() -> String {
    "f32".into()
}

/// Whether a file of a model folder decides the model's log-probabilities: every weight file
/// (`*.safetensors` but the optimizer's, shards and LoRA adapters included; `*.gguf`), the
/// shard index, the model and adapter configs, and the tokenizer files.
fn is_identity_file(name: &str) -> bool {
    (name.ends_with(".safetensors") && name != OPTIMIZER_FILE)
        || name.ends_with(".gguf")
        || name.ends_with(".safetensors.index.json")
        || matches!(
            name,
            CONFIG_FILE
                | ADAPTER_CONFIG_FILE
                | "tokenizer.json"
                | "tokenizer_config.json"
                | "tokenizer.model"
                | "special_tokens_map.json"
                | "chat_template.jinja"
        )
}

/// sha256 over the names and contents of a model's files without loading them (see
/// [`is_identity_file`]); `None` when no weight file was found, and then no cache is reused.
fn model_sha(model: &str) -> Result<Option<String>> {
    Ok(match ModelSpec::resolve(model)? {
        ModelSpec::GgufFile(p) => Some(sha256_file(&p)?),
        ModelSpec::Folder(dir) => {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .flatten()
                // `is_file` follows links: a Hugging Face cache snapshot links its blobs.
                .filter(|e| e.path().is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_identity_file(n))
                .collect();
            names.sort();
            let weights = names
                .iter()
                .any(|n| n.ends_with(".safetensors") || n.ends_with(".gguf"));
            weights.then(|| sha256_files(&dir, &names)).transpose()?
        }
    })
}

/// The reference's log-probabilities `[a, b]` of the training and held-out pairs.
struct ReferenceLogps {
    train: Vec<[f64; 2]>,
    eval: Vec<[f64; 2]>,
    /// Whether they came from the output folder.
    reused: bool,
}

/// The reference log-probabilities: read from `out/REFERENCE_FILE` when it matches the
/// reference and the pairs, computed (and written) otherwise.
fn reference_logps(
    cfg: &TrainDpoConfig,
    train: &[DpoPair],
    eval: &[DpoPair],
) -> Result<ReferenceLogps> {
    let path = cfg.out.join(REFERENCE_FILE);
    let reference = cfg.reference_model();
    let sha = model_sha(reference)?;
    let (train_fp, eval_fp) = (pairs_fingerprint(train), pairs_fingerprint(eval));
    let device = compute_device()?;
    let dtype = cfg.train.dtype.compute_dtype(&device)?;
    let dtype_name = dtype.as_str().to_string();
    if let Ok(text) = std::fs::read_to_string(&path) {
        let stored: ReferenceFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        // A reference whose files could not be hashed is never taken for another.
        if sha.is_some()
            && stored.reference_sha256 == sha
            && stored.train_fingerprint == train_fp
            && stored.eval_fingerprint == eval_fp
            && stored.dtype == dtype_name
        {
            return Ok(ReferenceLogps {
                train: stored.train,
                eval: stored.eval,
                reused: true,
            });
        }
        eprintln!(
            "cai: train dpo: {} is for other pairs, another reference or another dtype; \
             computing it anew",
            path.display()
        );
    }
    let (model_cfg, weights, _) =
        load_base(reference).with_context(|| format!("loading the reference {reference}"))?;
    let model = model_from_weights(&model_cfg, &weights)?.with_compute_dtype(dtype)?;
    let total = (train.len() + eval.len()) as u64;
    let pb = crate::progress::bar(total, 0, "reference log-probs", cfg.quiet);
    let bs = cfg.train.batch_size;
    let train_ref = pair_logps(&model, train, bs, &device, |n| pb.set_position(n as u64))?;
    let done = train.len() as u64;
    let eval_ref = pair_logps(&model, eval, bs, &device, |n| {
        pb.set_position(done + n as u64)
    })?;
    pb.finish_and_clear();
    let file = ReferenceFile {
        reference: reference.to_string(),
        reference_sha256: sha,
        dtype: dtype_name,
        train_fingerprint: train_fp,
        eval_fingerprint: eval_fp,
        train: train_ref,
        eval: eval_ref,
    };
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let tmp = cfg.out.join(format!(".{REFERENCE_FILE}.partial"));
    std::fs::write(&tmp, serde_json::to_vec(&file)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(ReferenceLogps {
        train: file.train,
        eval: file.eval,
        reused: false,
    })
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct DpoSummary {
    pub train_pairs: usize,
    pub eval_pairs: usize,
    /// Where the held-out pairs came from and what they hold (counted before identical
    /// pairs are dropped).
    pub held_out: HeldOut,
    pub dropped: DataCounts,
    /// Whether the reference log-probabilities came from `reference_logps.json`.
    pub reference_reused: bool,
    pub steps: usize,
    /// Held-out metrics before the first step and after the last.
    pub eval_before: Option<DpoEval>,
    pub eval_after: Option<DpoEval>,
    pub pairs_per_s: f64,
    pub tokens_per_s: f64,
    pub final_dir: PathBuf,
}

/// Runs `cai train dpo`.
pub fn run(cfg: &TrainDpoConfig) -> Result<DpoSummary> {
    let started = now_unix();
    let tok = ChatTokenizer::open(&cfg.model)?;
    let mut counts = DataCounts::default();
    let mut text_pairs = Vec::new();
    for src in &cfg.data {
        let (pairs, unlabelled) = read_dpo_source(src)?;
        counts.unlabelled += unlabelled;
        text_pairs.extend(pairs);
    }
    let eval_file = match &cfg.eval {
        Some(path) => {
            let src = DataSource {
                path: path.clone(),
                weight: 1.0,
            };
            Some((path.as_path(), read_dpo_source(&src)?.0))
        }
        None => None,
    };
    let split = split_held_out(text_pairs, eval_file, cfg.eval_fraction, cfg.train.seed);
    eprintln!("cai: train dpo: {}", split.held_out.describe());
    let (train_text, eval_text) = (split.train, split.eval);
    let max_len = cfg.train.max_len;
    let train = tokenize_dpo_pairs(&tok, &train_text, max_len, Some(cfg.loss), &mut counts)?;
    let eval = tokenize_dpo_pairs(&tok, &eval_text, max_len, None, &mut DataCounts::default())?;
    if counts != DataCounts::default() {
        eprintln!(
            "cai: train dpo: dropped {} unlabelled or unrevised row(s), {} identical pair(s), \
             {} tie(s) the {} loss cannot use; {} sequence(s) cut to {max_len} tokens",
            counts.unlabelled, counts.identical, counts.ties, cfg.loss, counts.truncated
        );
    }
    let sources: Vec<String> = cfg
        .data
        .iter()
        .map(|s| s.path.display().to_string())
        .collect();
    ensure!(
        !train.is_empty(),
        "no usable training pairs in {} ({} held out; dropped: {} unlabelled, {} identical, \
         {} ties for the {} loss)",
        sources.join(", "),
        eval.len(),
        counts.unlabelled,
        counts.identical,
        counts.ties,
        cfg.loss
    );

    let resume_from = resume_point(&cfg.out, cfg.resume)?;
    let reference = reference_logps(cfg, &train, &eval)?;
    let reused = reference.reused;
    let data = DpoData {
        train: train.clone(),
        train_reference: reference.train,
        eval: eval.clone(),
        eval_reference: reference.eval,
    };
    let device = compute_device()?;
    let (mut trainer, model_sha) = match resume_from {
        Some(dir) => {
            eprintln!("cai: train dpo: resuming from {}", dir.display());
            let sha = sha256_file(&dir.join(WEIGHTS_FILE)).ok();
            (
                DpoTrainer::resume(&dir, data, &device, cfg.trainer_config())?,
                sha,
            )
        }
        None => {
            let (model_cfg, weights, sha) = load_base(&cfg.model)?;
            let trainer = DpoTrainer::new(&model_cfg, weights, data, cfg.trainer_config())?;
            (trainer, sha)
        }
    };
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let resolved = cfg.out.join("dpo_config.yaml");
    std::fs::write(&resolved, serde_yaml::to_string(cfg)?)
        .with_context(|| format!("writing {}", resolved.display()))?;

    let files = tok.folder_files()?;
    let state = trainer.state();
    if let Some(w) = warmup_warning(cfg.train.warmup_steps, state.total_steps, cfg.train.lr) {
        eprintln!("cai: warning: train dpo: {w}");
    }
    let pb = crate::progress::bar(
        state.total_steps as u64,
        state.step as u64,
        "train dpo",
        cfg.quiet,
    );
    let mut observer = |e: &TrainEvent| match e {
        TrainEvent::Step(s) => {
            pb.set_position(s.step as u64);
            pb.set_message(format!(
                "loss {:.4} · {:.0} tokens/s",
                s.loss, s.tokens_per_s
            ));
        }
        TrainEvent::Eval { step, loss } => {
            pb.suspend(|| eprintln!("cai: train dpo: step {step}: held-out DPO loss {loss:.4}"))
        }
        TrainEvent::Checkpoint { .. } => {}
    };
    let final_dir = trainer
        .run(&cfg.out, &files, &mut observer)
        .with_context(|| format!("training into {}", cfg.out.display()))?;
    pb.finish_and_clear();
    let state = trainer.state().clone();
    let (pairs, tokens, seconds) = state.history.iter().fold((0, 0, 0.0), |acc, p| {
        (acc.0 + p.pairs, acc.1 + p.tokens, acc.2 + p.seconds)
    });
    let summary = DpoSummary {
        train_pairs: train.len(),
        eval_pairs: eval.len(),
        held_out: split.held_out,
        dropped: counts,
        reference_reused: reused,
        steps: state.step,
        eval_before: state.evals.iter().find(|e| e.step == 0).cloned(),
        eval_after: state.evals.last().cloned(),
        pairs_per_s: pairs as f64 / f64::max(seconds, 1e-9),
        tokens_per_s: tokens as f64 / f64::max(seconds, 1e-9),
        final_dir,
    };
    write_report(&cfg.out, &state, &summary)?;
    write_manifest(cfg, &summary, model_sha, tok.context, started)?;
    Ok(summary)
}

fn write_manifest(
    cfg: &TrainDpoConfig,
    s: &DpoSummary,
    model_sha: Option<String>,
    context: usize,
    started: u64,
) -> Result<()> {
    let data_sha = cfg
        .data
        .iter()
        .map(|d| sha256_file(&d.path))
        .collect::<Result<Vec<_>>>()?;
    let config = serde_json::to_value(cfg)?;
    let manifest = Manifest {
        cai_version: env!("CARGO_PKG_VERSION").to_string(),
        command: "train dpo".into(),
        fingerprint: sha256_json(&[&config, &json!(data_sha), &json!(model_sha)]),
        config,
        constitution: None,
        model: ModelInfo {
            backend: "local".into(),
            name: cfg.model.clone(),
            sha256: model_sha,
            context,
        },
        started_unix: started,
        finished_unix: Some(now_unix()),
        stats: json!({ "data_sha256": data_sha, "summary": s }),
    };
    let path = cfg.out.join(MANIFEST);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// `metrics.json`, `loss.svg`, `accuracy.svg` and `rewards.svg` in `out`.
fn write_report(out: &Path, state: &DpoTrainerState, s: &DpoSummary) -> Result<()> {
    let path = out.join(METRICS);
    std::fs::write(&path, serde_json::to_string_pretty(s)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let train = |f: fn(&crate::train::dpo_trainer::DpoStepPoint) -> f64| {
        state
            .history
            .iter()
            .map(|p| (p.step as f64, f(p)))
            .collect()
    };
    let held = |f: fn(&DpoEval) -> f64| state.evals.iter().map(|e| (e.step as f64, f(e))).collect();
    let charts = [
        (
            LOSS_PLOT,
            plot::line_chart(
                &format!("DPO loss ({})", state.config.loss),
                "step",
                "pair loss",
                &[
                    LineSeries::new("train", train(|p| p.loss)),
                    LineSeries::new("held-out", held(|e| e.loss)),
                ],
            ),
        ),
        (
            ACCURACY_PLOT,
            plot::line_chart(
                "Implicit-reward accuracy (β·log π/π_ref, chosen > rejected)",
                "step",
                "accuracy",
                &[
                    LineSeries::new("train batch", train(|p| p.accuracy)),
                    LineSeries::new("held-out", held(|e| e.accuracy)),
                    LineSeries::new("held-out log-prob", held(|e| e.logp_accuracy)),
                ],
            ),
        ),
        (
            REWARDS_PLOT,
            plot::line_chart(
                "Held-out log-prob drift from the reference and reward margin",
                "step",
                "nats per response / margin",
                &[
                    LineSeries::new("chosen log π − log π_ref", held(|e| e.chosen_drift)),
                    LineSeries::new("rejected log π − log π_ref", held(|e| e.rejected_drift)),
                    LineSeries::new("margin", held(|e| e.margin)),
                ],
            ),
        ),
    ];
    for (name, svg) in charts {
        plot::write_svg(&out.join(name), &svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::{CONFIG_FILE, WEIGHTS_INDEX_FILE};
    use crate::model_files::config::LlamaConfig;
    use crate::model_files::weights::init_random;
    use crate::train::TokenizedExample;
    use candle_core::{DType, Device};

    /// A tiny llama in two shards with an index, random weights from `seed`.
    fn sharded_model(dir: &Path, seed: u64) -> Result<()> {
        let mut cfg = LlamaConfig::new(16, 8, 16, 2, 2, 1);
        cfg.tie_word_embeddings = true;
        let weights = init_random(&cfg, 0.5, seed, DType::F32, &Device::Cpu)?;
        std::fs::create_dir_all(dir)?;
        cfg.to_file(&dir.join(CONFIG_FILE))?;
        let (mut shards, mut map) = ([Vec::new(), Vec::new()], serde_json::Map::new());
        let files = [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ];
        for (i, (name, t)) in weights.into_iter().enumerate() {
            map.insert(name.clone(), json!(files[i % 2]));
            shards[i % 2].push((name, t));
        }
        for (shard, file) in shards.into_iter().zip(files) {
            let shard: std::collections::HashMap<_, _> = shard.into_iter().collect();
            candle_core::safetensors::save(&shard, dir.join(file))?;
        }
        let index = json!({ "weight_map": map }).to_string();
        std::fs::write(dir.join(WEIGHTS_INDEX_FILE), index)?;
        Ok(())
    }

    fn pair(prompt: &[u32], a: &[u32], b: &[u32]) -> DpoPair {
        let ex = |r: &[u32]| TokenizedExample {
            tokens: prompt.iter().chain(r).copied().collect(),
            loss_mask: (0..prompt.len() + r.len())
                .map(|i| i >= prompt.len())
                .collect(),
        };
        DpoPair {
            a: ex(a),
            b: ex(b),
            p_a: 1.0,
            weight: 1.0,
            group: "g".into(),
        }
    }

    #[test]
    fn dpo_cache_rehashes_sharded_reference() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let (ref_a, ref_b) = (tmp.path().join("a"), tmp.path().join("b"));
        sharded_model(&ref_a, 1)?;
        sharded_model(&ref_b, 2)?;
        let train = vec![
            pair(&[1, 2], &[3, 4], &[5]),
            pair(&[6], &[7, 8, 9], &[10, 11]),
        ];
        let eval = vec![pair(&[2], &[12], &[13, 14])];
        let cfg = |reference: &Path| TrainDpoConfig {
            reference: Some(reference.to_string_lossy().into_owned()),
            out: tmp.path().join("out"),
            quiet: true,
            ..TrainDpoConfig::default()
        };
        let first = reference_logps(&cfg(&ref_a), &train, &eval)?;
        assert!(!first.reused);
        // The same reference again: the cache is used.
        assert!(reference_logps(&cfg(&ref_a), &train, &eval)?.reused);
        // Another sharded reference (other weights, no model.safetensors in either folder):
        // recomputed, and its log-probabilities differ.
        let second = reference_logps(&cfg(&ref_b), &train, &eval)?;
        assert!(!second.reused);
        assert_ne!(first.train, second.train);
        // The config counts too: a changed norm ε in a's config.json is another reference.
        let path = ref_a.join(CONFIG_FILE);
        let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        config["rms_norm_eps"] = json!(0.25);
        std::fs::write(&path, config.to_string())?;
        assert!(!reference_logps(&cfg(&ref_a), &train, &eval)?.reused);
        assert!(reference_logps(&cfg(&ref_a), &train, &eval)?.reused);
        // A folder with no weight file hashes to nothing, and nothing matches nothing.
        assert_eq!(model_sha(tmp.path().join("out").to_str().unwrap())?, None);
        Ok(())
    }
}
