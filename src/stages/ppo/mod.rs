//! `cai train ppo`: the RL stage of Constitutional AI (RL-CAI, Bai et al. 2022 §4) — PPO (or
//! GRPO / RLOO / REINFORCE) of the SFT policy against the reward model, the feedback model's
//! rating ("direct RLAIF") or a weighted mix, with a KL penalty to the SFT model.
//!
//! Writes, into `--out`: `checkpoint-N/` folders that resume exactly, `final/` (the policy as
//! a model folder every stage loads), `train_log.csv` (one row per step), `rewards.svg`,
//! `kl.svg`, `samples.jsonl` (responses every `sample_every` steps), `manifest.json`.
//! Reward-hacking guards stop (or warn) when the KL or the mean response length leave their
//! bounds; the most repeated phrases of the last responses are reported.

pub mod labeler_reward;

use crate::artifacts::{FINAL_DIR, KL_PLOT, MANIFEST, REWARDS_PLOT, SAMPLES, TRAIN_LOG};
use crate::train::memory::{self, rows_per_pass, MemoryPlan};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::choice::Choice;
use crate::hash::{sha256_file, sha256_files, sha256_json};
use crate::inputs::{read_prompts, PromptItem};
use crate::jsonl;
use crate::llm::{ModelInfo, Prompt};
use crate::manifest::{now_unix, Manifest};
use crate::model_files::checkpoint::checkpoint_dir;
use crate::model_files::checkpoint::load_base;
use crate::model_files::weights::dtype_device;
use crate::model_files::ChatTokenizer;
use crate::plot::{line_chart, write_svg, LineSeries};
use crate::progress;
use crate::stages::ppo::labeler_reward::{LabelerRater, LabelerRewardConfig};
use crate::train::advantage::AdvantageEstimator;
use crate::train::data::prepare_examples;
use crate::train::ppo::{PpoData, PpoTrainer, Scorer};
use crate::train::ppo_config::{PpoConfig, PpoStepStats};
use crate::train::ppo_math::{repeated_phrases, LossAggregation};
use crate::train::ppo_rollout::Rollout;
use crate::train::resume::resume_point;
use crate::train::reward_text::TextRewardModel;
use crate::train::sft_data::{read_pairs, tokenize, RoundChoice};

/// SFT examples of PPO-ptx are cut to this many tokens.
const PTX_MAX_LEN: usize = 512;

/// What a guard does when its bound is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    /// Print a warning and go on.
    Warn,
    /// Save a checkpoint and stop with an error.
    Stop,
}

/// Reward-hacking guards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Guards {
    /// Bound on the mean KL per response (nats) (default 20).
    pub max_kl: Option<f64>,
    /// Bound on the mean response length as a multiple of the first step's (default 3).
    pub max_length_ratio: Option<f64>,
    pub action: GuardAction,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            max_kl: Some(20.0),
            max_length_ratio: Some(3.0),
            action: GuardAction::Stop,
        }
    }
}

/// Where the reward of a response comes from: a weighted sum of the reward model's score and
/// the feedback model's expected 1–10 rating (Lee et al. 2023 §2.3, "direct RLAIF").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardWeights {
    /// Weight of the reward model's score (default 1).
    pub reward_model: f64,
    /// Weight of the feedback model's expected rating (default 0).
    pub labeler: f64,
}

impl Default for RewardWeights {
    fn default() -> Self {
        Self {
            reward_model: 1.0,
            labeler: 0.0,
        }
    }
}

/// Settings of `cai train ppo`. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoRunConfig {
    /// Starting policy: normally the `cai train sft` output's `final/` folder.
    pub policy: String,
    /// Reference of the KL penalty (default: the starting policy).
    pub reference: Option<String>,
    /// Reward model folder (`cai train rm` output's `final/`).
    pub reward_model: Option<PathBuf>,
    /// Weights of the reward sources (default: the reward model alone).
    pub reward: RewardWeights,
    /// The feedback model, when `reward.labeler` is above 0.
    pub labeler: LabelerRewardConfig,
    /// Prompts (red-team prompts: JSONL with `prompt`/`messages`, or plain lines).
    pub prompts: PathBuf,
    /// SFT data for PPO-ptx (`cai revise` output or TRL SFT rows).
    pub ptx_data: Option<PathBuf>,
    pub out: PathBuf,
    /// Prompts longer than this many tokens are left out (with a warning).
    pub max_prompt_tokens: usize,
    /// Longest sequence the reward model reads (the response end is kept).
    pub rm_max_len: usize,
    /// Checkpoint every N steps (0: only the final policy) (default 5).
    pub save_every: usize,
    /// Write the step's responses to `samples.jsonl` every N steps (0: never) (default 5).
    pub sample_every: usize,
    pub guards: Guards,
    pub resume: bool,
    pub quiet: bool,
    pub ppo: PpoConfig,
}

impl Default for PpoRunConfig {
    fn default() -> Self {
        Self {
            policy: "runs/sft/final".into(),
            reference: None,
            reward_model: None,
            reward: RewardWeights::default(),
            labeler: LabelerRewardConfig::default(),
            prompts: PathBuf::from("data/sample-prompts.jsonl"),
            ptx_data: None,
            out: PathBuf::from("runs/ppo"),
            max_prompt_tokens: 256,
            rm_max_len: 512,
            save_every: 5,
            sample_every: 5,
            guards: Guards::default(),
            resume: false,
            quiet: false,
            ppo: PpoConfig::default(),
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct PpoRunSummary {
    pub steps: usize,
    pub prompts: usize,
    pub skipped_long: usize,
    pub first: Option<PpoStepStats>,
    pub last: Option<PpoStepStats>,
    pub seconds_per_step: f64,
    pub repeated_phrases: Vec<(String, usize)>,
    pub final_dir: PathBuf,
    /// How the policy loss was aggregated over an update's tokens (`ppo.loss_aggregation`).
    pub loss_aggregation: LossAggregation,
    /// Responses left unscored over the run (feedback prompt over the context).
    pub unscored: usize,
}

/// The reward sources as a PPO scorer: responses are decoded and scored as text, so the
/// reward model and the feedback model may use other tokenizers than the policy. The score
/// is `w_rm · reward + w_labeler · expected rating`; a response the feedback model could not
/// rate (its prompt overflowed the context) has no score, and the trainer leaves it out. The
/// texts of the last call are kept for the samples file and the run summary.
struct MixScorer<'a> {
    rm: Option<(TextRewardModel, f64)>,
    labeler: Option<(LabelerRater, f64)>,
    policy_tok: &'a ChatTokenizer,
    prompts: &'a [PromptItem],
    texts: Vec<String>,
    /// Responses whose feedback prompt overflowed the context (unscored).
    overflowed: usize,
}

impl Scorer for MixScorer<'_> {
    fn score(&mut self, rollouts: &[Rollout]) -> Result<Vec<Option<f64>>> {
        self.texts = rollouts
            .iter()
            .map(|r| response_text(self.policy_tok, r))
            .collect::<Result<_>>()?;
        let items: Vec<(&[crate::chat::ChatMessage], &str)> = rollouts
            .iter()
            .zip(&self.texts)
            .map(|(r, t)| (self.prompts[r.prompt].conversation.as_slice(), t.as_str()))
            .collect();
        let mut total = vec![Some(0.0); items.len()];
        if let Some((rm, w)) = &self.rm {
            for (t, s) in total.iter_mut().zip(rm.score(&items, 8)?) {
                *t = t.map(|t| t + w * s);
            }
        }
        if let Some((rater, w)) = &self.labeler {
            let rated = rater.rate(&items)?;
            self.overflowed += rated.overflowed;
            for (t, s) in total.iter_mut().zip(rated.ratings) {
                *t = t.zip(s).map(|(t, s)| t + w * s);
            }
        }
        Ok(total)
    }
}

/// The response's text without its stop token.
fn response_text(tok: &ChatTokenizer, r: &Rollout) -> Result<String> {
    let ids = match r.ended {
        true => &r.response_ids[..r.response_ids.len() - 1],
        false => &r.response_ids[..],
    };
    tok.tokenizer.decode(ids)
}

/// Runs `cai train ppo`.
pub fn run(cfg: &PpoRunConfig) -> Result<PpoRunSummary> {
    let started = now_unix();
    let default_policy = PpoRunConfig::default().policy;
    if cfg.policy == default_policy && !Path::new(&default_policy).exists() {
        bail!(
            "no policy: the default `{default_policy}` (a `cai train sft` output) is not here; \
             pass --policy (`default` for the embedded model, a GGUF file or a model folder)"
        );
    }
    let rm = match cfg.reward.reward_model > 0.0 {
        true => {
            let dir = cfg.reward_model.as_deref().context(
                "no reward model: pass --reward-model DIR (the final/ folder of cai train rm), \
                 or --reward labeler",
            )?;
            Some((
                TextRewardModel::open(dir, cfg.rm_max_len)?,
                cfg.reward.reward_model,
            ))
        }
        false => None,
    };
    let labeler = match cfg.reward.labeler > 0.0 {
        true => Some((
            LabelerRater::open(&cfg.labeler, cfg.ppo.seed)?,
            cfg.reward.labeler,
        )),
        false => None,
    };
    let policy_tok = ChatTokenizer::open(&cfg.policy)
        .with_context(|| format!("opening the policy {}", cfg.policy))?;
    let items = read_prompts(&cfg.prompts)?;
    let (prompts, token_ids, skipped_long) = encode_prompts(&policy_tok, items, cfg)?;
    let ptx = match &cfg.ptx_data {
        Some(path) => {
            let set = read_pairs(path, RoundChoice::Final)?;
            let set = tokenize(&set.pairs, &policy_tok, PTX_MAX_LEN)
                .with_context(|| format!("tokenizing {}", path.display()))?;
            prepare_examples(&set.examples, PTX_MAX_LEN)?.examples
        }
        None => Vec::new(),
    };
    let reference_name = cfg.reference.as_deref().unwrap_or(&cfg.policy);
    let (ref_config, reference, ref_sha) = load_base(reference_name)
        .with_context(|| format!("loading the reference model {reference_name}"))?;
    let data = PpoData {
        prompts: token_ids,
        stop_ids: policy_tok.tokenizer.stop_ids.clone(),
        ptx,
        reward_sources: reward_sources(cfg, reference_name, ref_sha.as_deref(), &labeler)?,
    };
    eprintln!("cai: train ppo: {}", method_line(&cfg.ppo));
    let mut trainer = match resume_point(&cfg.out, cfg.resume)? {
        Some(dir) => {
            eprintln!("cai: train ppo: resuming from {}", dir.display());
            PpoTrainer::resume(&dir, &reference, data, cfg.ppo.clone())?
        }
        None => {
            let (policy_config, weights, _) = load_base(&cfg.policy)
                .with_context(|| format!("loading the policy {}", cfg.policy))?;
            ensure!(
                policy_config.vocab_size == ref_config.vocab_size,
                "the policy and the reference have different vocabularies ({} vs {})",
                policy_config.vocab_size,
                ref_config.vocab_size
            );
            let longest = data.prompts.iter().map(Vec::len).max().unwrap_or(0);
            let plan = MemoryPlan {
                model: &policy_config,
                trainable: &cfg.ppo.trainable,
                rows: rows_per_pass(
                    cfg.ppo.minibatch,
                    longest + cfg.ppo.max_new_tokens,
                    cfg.ppo.max_batch_tokens,
                ),
                tokens_per_row: longest + cfg.ppo.max_new_tokens,
                // The reference and the reward model.
                frozen_models: 2,
                // Every step makes several updates (epochs × minibatches).
                one_update: false,
                compute: cfg.ppo.dtype.compute_dtype(&dtype_device(&weights)?.1)?,
            };
            memory::check_fits(&plan, "train ppo")?;
            PpoTrainer::new(&policy_config, weights, &reference, data, cfg.ppo.clone())?
        }
    };
    let mut scorer = MixScorer {
        rm,
        labeler,
        policy_tok: &policy_tok,
        prompts: &prompts,
        texts: Vec::new(),
        overflowed: 0,
    };
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let files = policy_tok.folder_files()?;
    let extra: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (*n, b.clone())).collect();
    let samples_path = cfg.out.join(SAMPLES);
    let mut samples = jsonl::Appender::open(&samples_path)?;

    let total = trainer.config().steps as u64;
    let pb = progress::bar(total, trainer.state().step as u64, "ppo", cfg.quiet);
    let t0 = Instant::now();
    let mut steps_run = 0usize;
    let mut last_texts = Vec::new();
    while !trainer.is_done() {
        let step = trainer.step(&mut scorer)?;
        steps_run += 1;
        let s = &step.stats;
        pb.set_position(s.step as u64);
        pb.set_message(format!(
            "score {:.3} · KL {:.3} · len {:.0} · {:.1} s/step",
            s.score, s.kl, s.response_len, s.seconds
        ));
        write_log(&cfg.out, &trainer.state().history)?;
        last_texts = std::mem::take(&mut scorer.texts);
        if cfg.sample_every > 0 && s.step % cfg.sample_every == 0 {
            for ((r, text), score) in step.rollouts.iter().zip(&last_texts).zip(&step.scores) {
                samples.append(&json!({
                    "step": s.step,
                    "prompt": prompts[r.prompt].conversation.last().map(|m| &m.content),
                    "response": text,
                    "score": score,
                    "ended": r.ended,
                }))?;
            }
        }
        let is_last = trainer.is_done();
        if cfg.save_every > 0 && (s.step % cfg.save_every == 0 || is_last) {
            trainer.save_checkpoint(&checkpoint_dir(&cfg.out, s.step), &extra)?;
        }
        if let Some(problem) = guard_problem(&cfg.guards, &trainer.state().history) {
            match cfg.guards.action {
                GuardAction::Warn => progress::warn(&pb, &format!("warning: {problem}")),
                GuardAction::Stop => {
                    let dir = checkpoint_dir(&cfg.out, s.step);
                    trainer.save_checkpoint(&dir, &extra)?;
                    pb.finish_and_clear();
                    bail!(
                        "step {}: {problem}; stopped (guards.action: stop). The state is in {}; \
                         raise the bound or set guards.action to warn, then --resume",
                        s.step,
                        dir.display()
                    );
                }
            }
        }
    }
    pb.finish_and_clear();
    if scorer.overflowed > 0 {
        eprintln!(
            "cai: train ppo: {} response(s) overflowed the feedback model's context: no score, \
             no advantage, left out of the loss (column `unscored` of {})",
            scorer.overflowed,
            cfg.out.join(TRAIN_LOG).display()
        );
    }
    let final_dir = cfg.out.join(FINAL_DIR);
    trainer.save_final(&final_dir, &extra)?;
    let history = trainer.state().history.clone();
    write_charts(&cfg.out, &history)?;
    let repeated = repeated_phrases(&last_texts, 3, 5);
    let seconds_per_step = match steps_run {
        0 => 0.0,
        n => t0.elapsed().as_secs_f64() / n as f64,
    };
    let summary = PpoRunSummary {
        steps: history.len(),
        prompts: prompts.len(),
        skipped_long,
        first: history.first().cloned(),
        last: history.last().cloned(),
        seconds_per_step,
        repeated_phrases: repeated,
        final_dir,
        loss_aggregation: cfg.ppo.loss_aggregation,
        unscored: history.iter().map(|s| s.unscored).sum(),
    };
    write_manifest(cfg, &summary, started, ref_sha, &policy_tok)?;
    Ok(summary)
}

/// What the rewards and the KL of the run come from, recorded in its checkpoints so that a
/// resume with another reward model, reference, reward weights or feedback model is refused:
/// the contents' sha256 (a moved folder with the same files is the same source), the
/// reward weights, and the settings that change a score.
fn reward_sources(
    cfg: &PpoRunConfig,
    reference: &str,
    reference_sha: Option<&str>,
    labeler: &Option<(LabelerRater, f64)>,
) -> Result<serde_json::Value> {
    let rm = match (cfg.reward.reward_model > 0.0, &cfg.reward_model) {
        (true, Some(dir)) => json!({
            "sha256": folder_sha256(dir)?,
            "rm_max_len": cfg.rm_max_len,
        }),
        _ => serde_json::Value::Null,
    };
    let labeler = match labeler {
        Some((rater, _)) => {
            let info = rater.model_info();
            let l = &cfg.labeler;
            json!({
                "backend": info.backend,
                "model": info.sha256.clone().unwrap_or_else(|| info.name.clone()),
                "constitution_sha256": sha256_file(&l.constitution)?,
                "templates_sha256": l.templates.as_deref().map(folder_sha256).transpose()?,
                "few_shot": l.few_shot,
            })
        }
        None => serde_json::Value::Null,
    };
    Ok(json!({
        "reward": {"reward_model": cfg.reward.reward_model, "labeler": cfg.reward.labeler},
        "reward_model": rm,
        "reference": reference_sha.unwrap_or(reference),
        "labeler": labeler,
    }))
}

/// [`sha256_files`] of the regular files directly in `dir`, in name order.
fn folder_sha256(dir: &Path) -> Result<String> {
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        if e.path().is_file() {
            names.push(e.file_name());
        }
    }
    names.sort();
    sha256_files(dir, &names)
}

/// The method in words, for the run's log: estimator, group, KL placement and how the
/// policy loss is aggregated.
fn method_line(p: &PpoConfig) -> String {
    let kl = match p.kl_in_loss {
        true => "β·k3 KL in the loss",
        false => "β·KL in the reward",
    };
    let agg = p.loss_aggregation.name();
    match p.advantage {
        AdvantageEstimator::Gae => format!(
            "advantage gae (value head), {kl}; policy loss aggregated as {agg}, value loss \
             as token-mean"
        ),
        a => format!(
            "advantage {} with {} responses per prompt, {kl}; policy loss aggregated as {agg}",
            a.name(),
            p.group_size
        ),
    }
}

/// Tokenizes the prompts with the generation prompt open; drops those over the limit.
fn encode_prompts(
    tok: &ChatTokenizer,
    items: Vec<PromptItem>,
    cfg: &PpoRunConfig,
) -> Result<(Vec<PromptItem>, Vec<Vec<u32>>, usize)> {
    let (mut kept, mut ids, mut skipped) = (Vec::new(), Vec::new(), 0);
    for item in items {
        let prompt = Prompt {
            messages: item.conversation.clone(),
            prefill: String::new(),
        };
        let t = tok
            .encode_prompt(&prompt)
            .with_context(|| format!("{}:{}", cfg.prompts.display(), item.line))?;
        if t.len() > cfg.max_prompt_tokens {
            skipped += 1;
            continue;
        }
        kept.push(item);
        ids.push(t);
    }
    if skipped > 0 {
        eprintln!(
            "cai: train ppo: {skipped} prompt(s) of {} longer than max_prompt_tokens {} left out",
            cfg.prompts.display(),
            cfg.max_prompt_tokens
        );
    }
    ensure!(
        !kept.is_empty(),
        "{}: no prompt fits in max_prompt_tokens {}",
        cfg.prompts.display(),
        cfg.max_prompt_tokens
    );
    Ok((kept, ids, skipped))
}

/// The first guard the latest step breaks, if any.
fn guard_problem(g: &Guards, history: &[PpoStepStats]) -> Option<String> {
    let (first, last) = (history.first()?, history.last()?);
    if let Some(max) = g.max_kl.filter(|m| last.kl > *m) {
        return Some(format!(
            "mean KL to the reference {:.3} nats exceeds guards.max_kl {max}",
            last.kl
        ));
    }
    if let Some(ratio) = g.max_length_ratio {
        if last.response_len > ratio * first.response_len.max(1.0) {
            return Some(format!(
                "mean response length {:.1} tokens is over {ratio}× the first step's {:.1}",
                last.response_len, first.response_len
            ));
        }
    }
    None
}

const LOG_HEADER: &str = "step,score,reward,unscored,kl,beta,entropy,clip_frac,approx_kl,\
policy_loss,value_loss,value_clip_frac,explained_variance,response_len,ended,ptx_loss,lr,seconds";

/// Rewrites `train_log.csv` from the run's history (a resumed run's history is complete).
fn write_log(out: &Path, history: &[PpoStepStats]) -> Result<()> {
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    let mut text = format!("{LOG_HEADER}\n");
    for s in history {
        text.push_str(&format!(
            "{},{:.6},{:.6},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{},{:.2},{:.3},{},{:.3e},{:.3}\n",
            s.step,
            s.score,
            s.reward,
            s.unscored,
            s.kl,
            s.beta,
            s.entropy,
            s.clip_frac,
            s.approx_kl,
            s.policy_loss,
            s.value_loss,
            s.value_clip_frac,
            opt(s.explained_variance),
            s.response_len,
            s.ended,
            opt(s.ptx_loss),
            s.lr,
            s.seconds
        ));
    }
    let path = out.join(TRAIN_LOG);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_charts(out: &Path, history: &[PpoStepStats]) -> Result<()> {
    let pts = |f: &dyn Fn(&PpoStepStats) -> f64| -> Vec<(f64, f64)> {
        history.iter().map(|s| (s.step as f64, f(s))).collect()
    };
    let reward = [
        LineSeries::new("reward-model score", pts(&|s| s.score)),
        LineSeries::new("total reward (score − β·KL)", pts(&|s| s.reward)),
    ];
    write_svg(
        &out.join(REWARDS_PLOT),
        &line_chart("PPO reward", "step", "mean per response", &reward),
    )?;
    let kl = [LineSeries::new("KL to the reference", pts(&|s| s.kl))];
    write_svg(
        &out.join(KL_PLOT),
        &line_chart("PPO KL", "step", "nats per response", &kl),
    )
}

fn write_manifest(
    cfg: &PpoRunConfig,
    summary: &PpoRunSummary,
    started: u64,
    ref_sha: Option<String>,
    tok: &ChatTokenizer,
) -> Result<()> {
    let config = serde_json::to_value(cfg)?;
    let prompts_sha = sha256_file(&cfg.prompts)?;
    let manifest = Manifest {
        cai_version: env!("CARGO_PKG_VERSION").to_string(),
        command: "train ppo".into(),
        fingerprint: sha256_json(&[&config, &json!(prompts_sha), &json!(ref_sha)]),
        config,
        constitution: None,
        model: ModelInfo {
            backend: "local".into(),
            name: cfg.policy.clone(),
            sha256: ref_sha,
            context: tok.context,
        },
        started_unix: started,
        finished_unix: Some(now_unix()),
        stats: serde_json::to_value(summary)?,
    };
    let path = cfg.out.join(MANIFEST);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
