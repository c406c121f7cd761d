//! Argument groups shared by several subcommands (model and server selection, sampling
//! options, the trainable part) and the helpers every resolution uses.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::overlay::To;

use crate::choice::Choice;
use crate::llm::openai::{OptionScoring, PrefillMode};
use crate::llm::BackendKind;
use crate::train::{LoraConfig, Precision, ScheduleKind, Trainable};

/// A flag taking one of `T`'s named values; `--help` lists them with their descriptions.
pub fn choice<T: Choice + Clone + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(
        T::CHOICES
            .iter()
            .map(|(name, _, help)| PossibleValue::new(*name).help(*help)),
    )
    .map(|name| T::from_name(&name).expect("clap checked the name"))
}

/// A value that parses with `FromStr` (a schedule, a loss, a data source…).
pub fn parsed<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| e.to_string())
}

/// A number flag's value, refused unless finite: `nan` and `inf` parse as `f64` but would
/// slip past every range check (`nan < 0` is false) into a config.
pub fn finite(s: &str) -> Result<f64, String> {
    let x: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !x.is_finite() {
        return Err("must be a finite number".into());
    }
    Ok(x)
}

/// `cmd` with every `f64` flag, in it and its subcommands, parsed by [`finite`]: one place
/// for every number flag, present and future.
pub fn finite_floats(cmd: clap::Command) -> clap::Command {
    let f64_flags: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| a.get_value_parser().type_id() == std::any::TypeId::of::<f64>())
        .map(|a| a.get_id().clone())
        .collect();
    let mut cmd = f64_flags
        .into_iter()
        .fold(cmd, |c, id| c.mut_arg(id, |a| a.value_parser(finite)));
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, finite_floats);
    }
    cmd
}

/// `LO,HI` with 0 <= LO <= HI <= 1.
pub fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once(',').ok_or("expected LO,HI")?;
    let lo: f64 = a.trim().parse().map_err(|e| format!("{e}"))?;
    let hi: f64 = b.trim().parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo > hi {
        return Err("need 0 <= LO <= HI <= 1".into());
    }
    Ok((lo, hi))
}

/// Model selection shared by every stage that calls a model.
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct ModelArgs {
    /// Backend that runs the model.
    #[arg(long, value_parser = choice::<BackendKind>())]
    pub backend: Option<BackendKind>,
    /// `default` (embedded SmolLM2-135M-Instruct), a .gguf file, a model folder or a
    /// Hugging Face id from the local cache.
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerArgs,
}

/// Settings of `--backend openai` (an OpenAI-compatible server).
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct ServerArgs {
    /// Server root, e.g. http://127.0.0.1:8000 or https://api.openai.com/v1 (with or without
    /// the trailing /v1, behind a path prefix or not); repeat to spread requests over several.
    /// HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY are honoured.
    #[arg(long = "base-url", visible_alias = "base-urls")]
    pub base_urls: Vec<String>,
    /// Environment variable with the API key.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Longest wait for a whole answer in seconds, a slow trickle included.
    #[arg(long, visible_alias = "timeout")]
    pub timeout_s: Option<f64>,
    /// Longest wait for a connection (TLS handshake included) in seconds.
    #[arg(long, visible_alias = "connect-timeout")]
    pub connect_timeout_s: Option<f64>,
    /// PEM file of the CA certificates that sign the server's certificate (a private CA),
    /// trusted instead of the built-in roots (by default $SSL_CERT_FILE when set).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Retries of a failed request (timeouts, connection errors, answers cut short or not JSON,
    /// 429, 5xx).
    #[arg(long)]
    pub retries: Option<u32>,
    /// First retry backoff in seconds, doubled each retry.
    #[arg(long, visible_alias = "backoff")]
    pub backoff_s: Option<f64>,
    /// How a prefill (the start of the reply, e.g. "The answer is (") reaches the server.
    #[arg(long, value_parser = choice::<PrefillMode>())]
    pub prefill: Option<PrefillMode>,
    /// How answer options are scored (exactly, from the server's log-probabilities).
    #[arg(long, value_parser = choice::<OptionScoring>())]
    pub option_scoring: Option<OptionScoring>,
    /// Request cache folder (by default ~/.cache/cai/requests).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the request cache.
    #[arg(long, overrides_with = "cache")]
    pub no_cache: bool,
    /// Read and write the request cache (undoes `no_cache: true` in --config).
    #[arg(long, overrides_with = "no_cache")]
    pub cache: bool,
}

/// The sampling options beyond temperature and top-p, shared by every stage that generates
/// text (PPO rollouts excepted: they sample with temperature only, see `cai train ppo`).
/// Penalties look at the generated tokens only, never the prompt.
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct SamplingArgs {
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Drop tokens less than P times as likely as the most likely one (0 = off).
    #[arg(long, value_name = "P")]
    pub min_p: Option<f64>,
    /// Divide the positive logits (multiply the negative ones) of tokens among the last
    /// --repeat-last-n generated tokens by this (1 = off; the default is the local engine's
    /// and is not sent to OpenAI-compatible servers, which keep their own).
    #[arg(long, value_name = "R")]
    pub repetition_penalty: Option<f64>,
    /// Window of --repetition-penalty in generated tokens (0 = off).
    #[arg(long, value_name = "N")]
    pub repeat_last_n: Option<usize>,
    /// Subtract this from the logit of every token already generated (OpenAI semantics,
    /// -2..2; 0 = off).
    #[arg(long, value_name = "A", allow_negative_numbers = true)]
    pub presence_penalty: Option<f64>,
    /// Subtract this times its count from the logit of every token already generated (OpenAI
    /// semantics, -2..2; 0 = off).
    #[arg(long, value_name = "A", allow_negative_numbers = true)]
    pub frequency_penalty: Option<f64>,
}

/// Where the flags of [`ModelArgs`] go in a config that keeps `backend`, `model` and
/// `openai` under `prefix` (`""`, or `"labeler."` for eval's feedback model).
pub fn model_to(prefix: &str, id: &str) -> Option<To> {
    let key = match id {
        "backend" | "model" => id.to_string(),
        "retries" | "backoff_s" => format!("openai.retry.{id}"),
        "cache" => return Some(To::Not(format!("{prefix}openai.no_cache"))),
        "base_urls" | "api_key_env" | "concurrency" | "timeout_s" | "connect_timeout_s"
        | "ca_cert" | "prefill" | "option_scoring" | "cache_dir" | "no_cache" => {
            format!("openai.{id}")
        }
        _ => return None,
    };
    Some(To::key(format!("{prefix}{key}")))
}

/// Where the flags of [`SamplingArgs`] go: the same key under each of `prefixes` (one per
/// step a stage samples with, e.g. `answer.`, `critique.`, `revision.`).
pub fn sampling_to(prefixes: &[&str], id: &str) -> Option<To> {
    const IDS: &[&str] = &[
        "top_k",
        "min_p",
        "repetition_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
    ];
    IDS.contains(&id).then(|| each(prefixes, id))
}

/// `key` under each of `prefixes`.
pub fn each(prefixes: &[&str], key: &str) -> To {
    To::Keys(prefixes.iter().map(|p| format!("{p}{key}")).collect())
}

/// Where the flags of [`TrainingArgs`] go: under `train.`, except the trainable group, which
/// [`TrainableArgs::apply`] resolves (it combines several flags into one `Trainable`).
pub fn training_to(id: &str) -> Option<To> {
    match id {
        "trainable" | "top_layers" | "lora_rank" | "lora_alpha" | "lora_targets" => {
            Some(To::Explicit)
        }
        "lr" | "weight_decay" | "epochs" | "max_steps" | "batch_size" | "grad_accum"
        | "warmup_steps" | "schedule" | "min_lr_ratio" | "max_grad_norm" | "eval_every"
        | "save_every" | "max_len" | "max_batch_tokens" | "dtype" | "seed" => {
            Some(To::key(format!("train.{id}")))
        }
        _ => None,
    }
}

/// Where a resumable trainer's flags go (rm, dpo): [`training_to`], and `--resume` /
/// `--no-resume` as flags only (the config file has no `resume:`; the trainer's `finish` sets it).
pub fn resumable_training_to(id: &str) -> Option<To> {
    match id {
        "resume" | "no_resume" => Some(To::Explicit),
        _ => training_to(id),
    }
}

/// What `--trainable` names; `--top-layers` and `--lora-*` give the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainableKind {
    /// Every weight (full fine-tuning).
    All,
    /// The last `--top-layers N` blocks.
    TopLayers,
    /// LoRA adapters only (`--lora-rank`, `--lora-alpha`, `--lora-targets`).
    Lora,
}

/// The optimizer, schedule and data-loop flags `train sft`, `rm` and `dpo` share: their
/// configs keep these settings under `train:`.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct TrainingArgs {
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Passes over the training data when --max-steps is not set.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Examples (sft) or pairs (rm, dpo: all pairs of a conversation stay together) per
    /// micro-batch.
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
    /// Held-out evaluation every N steps (and at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps.
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Tokens per sequence: longer ones are cut (counted on stderr); sft keeps the start, rm
    /// the end, dpo drops the oldest turns first.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Token budget of one forward/backward pass: micro-batches larger than this (sequences ×
    /// longest sequence) run in parts whose gradients are accumulated, for the same update.
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Number format of the passes (bf16 keeps f32 master weights; GPU only).
    #[arg(long, value_parser = choice::<Precision>())]
    pub dtype: Option<Precision>,
    /// Seed of the data order, the held-out split and the initialisation of new weights (LoRA,
    /// reward head).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub trainable: TrainableArgs,
}

/// `t` as the flags would ask for it, for `--help`.
pub fn describe_trainable(t: &Trainable) -> String {
    match t {
        Trainable::All => "all".into(),
        Trainable::TopLayers(n) => format!("top-layers {n}"),
        Trainable::Lora(l) => format!(
            "lora (rank {}, alpha {}, targets {})",
            l.rank,
            l.alpha,
            l.targets.join(",")
        ),
    }
}

/// Which weights a training stage updates: the same flags for `train sft`, `rm` and `ppo`.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct TrainableArgs {
    /// What is trained.
    #[arg(long, value_enum)]
    pub trainable: Option<TrainableKind>,
    /// Train only the last N blocks (implies --trainable top-layers).
    #[arg(long, conflicts_with_all = ["lora_rank", "lora_alpha", "lora_targets"])]
    pub top_layers: Option<usize>,
    /// LoRA rank (implies --trainable lora).
    #[arg(long, visible_alias = "lora")]
    pub lora_rank: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha / rank.
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA target modules, comma separated, or `all`.
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
}

impl TrainableArgs {
    /// The flags applied to `t` (the stage's default or its `--config` choice). LoRA settings
    /// not given come from `t` when it is already LoRA, else from `lora`.
    pub fn apply(&self, t: &mut Trainable, lora: &LoraConfig) -> Result<()> {
        let lora_flags =
            self.lora_rank.is_some() || self.lora_alpha.is_some() || self.lora_targets.is_some();
        let kind = match (self.trainable, self.top_layers, lora_flags) {
            (Some(k), _, _) => k,
            (None, Some(_), _) => TrainableKind::TopLayers,
            (None, None, true) => TrainableKind::Lora,
            (None, None, false) => return Ok(()),
        };
        *t = match kind {
            TrainableKind::All => Trainable::All,
            TrainableKind::TopLayers => match (self.top_layers, &*t) {
                (Some(n), _) => Trainable::TopLayers(n),
                (None, Trainable::TopLayers(n)) => Trainable::TopLayers(*n),
                _ => bail!("--trainable top-layers needs --top-layers N"),
            },
            TrainableKind::Lora => {
                let mut l = t.lora().unwrap_or(lora).clone();
                if let Some(rank) = self.lora_rank {
                    l.rank = rank;
                }
                if let Some(alpha) = self.lora_alpha {
                    l.alpha = alpha;
                }
                if let Some(targets) = &self.lora_targets {
                    l.targets = targets.clone();
                }
                Trainable::Lora(l)
            }
        };
        Ok(())
    }
}

/// `argv` (after the program name) parsed into the flag group `A`, for tests.
#[cfg(test)]
pub fn parse_flags<A: Args + clap::FromArgMatches>(argv: &[&str]) -> Result<A> {
    let cmd = finite_floats(A::augment_args(clap::Command::new("cai")));
    let matches = cmd.try_get_matches_from(std::iter::once("cai").chain(argv.iter().copied()))?;
    Ok(A::from_arg_matches(&matches)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `f64` flag refuses `nan` and `inf` by name, before any range check could call
    /// them "negative"; finite values parse as before.
    #[test]
    fn nan_and_inf_flags_must_be_finite() {
        let cases: [(&[&str], &str); 6] = [
            (
                &["sample", "--prompts", "p.txt", "--temperature", "nan"],
                "--temperature",
            ),
            (
                &["sample", "--prompts", "p.txt", "--top-p", "inf"],
                "--top-p",
            ),
            (
                &["label", "--pairs", "p.jsonl", "--temperature", "NaN"],
                "--temperature",
            ),
            (&["train", "dpo", "--beta", "infinity"], "--beta"),
            (
                &["eval", "--tie-margin", "nan", "--policy-a", "a"],
                "--tie-margin",
            ),
            (&["revise", "--min-p", "inf"], "--min-p"),
        ];
        for (argv, flag) in cases {
            let e = crate::cli::command()
                .try_get_matches_from(std::iter::once("cai").chain(argv.iter().copied()))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("must be a finite number") && e.contains(flag),
                "{argv:?}: {e}"
            );
        }
        let m = crate::cli::command()
            .try_get_matches_from(["cai", "sample", "--prompts", "p", "--temperature", "0.7"])
            .unwrap();
        let sub = m.subcommand_matches("sample").unwrap();
        assert_eq!(sub.get_one::<f64>("temperature"), Some(&0.7));
    }

    /// `argv` applied to `start`, with the stage's LoRA default `lora`.
    fn apply(argv: &[&str], start: Trainable, lora: &LoraConfig) -> Result<Trainable> {
        let mut t = start;
        parse_flags::<TrainableArgs>(argv)?.apply(&mut t, lora)?;
        Ok(t)
    }

    #[test]
    fn trainable_flags_resolve_the_same_for_every_stage() -> Result<()> {
        let all_linear = LoraConfig {
            targets: vec!["all".into()],
            ..LoraConfig::default()
        };
        // No flag: the stage's choice stands.
        assert_eq!(
            apply(&[], Trainable::TopLayers(2), &all_linear)?,
            Trainable::TopLayers(2)
        );
        // `--lora R` (rm's older spelling) is `--lora-rank R`; unset fields from the default.
        assert_eq!(
            apply(&["--lora", "4"], Trainable::All, &all_linear)?,
            Trainable::Lora(LoraConfig {
                rank: 4,
                ..all_linear.clone()
            })
        );
        // Settings already LoRA keep what the flags do not change.
        let yaml = Trainable::Lora(LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec!["q_proj".into()],
        });
        assert_eq!(
            apply(&["--lora-alpha", "2"], yaml.clone(), &all_linear)?,
            Trainable::Lora(LoraConfig {
                rank: 4,
                alpha: 2.0,
                targets: vec!["q_proj".into()],
            })
        );
        assert_eq!(
            apply(&["--trainable", "all"], yaml, &all_linear)?,
            Trainable::All
        );
        assert_eq!(
            apply(&["--top-layers", "3"], Trainable::All, &all_linear)?,
            Trainable::TopLayers(3)
        );
        // Contradictions are errors, not silent choices.
        assert!(apply(
            &["--top-layers", "3", "--lora-rank", "4"],
            Trainable::All,
            &all_linear
        )
        .is_err());
        assert!(apply(&["--trainable", "top-layers"], Trainable::All, &all_linear).is_err());
        Ok(())
    }
}
