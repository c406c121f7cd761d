//! Command-line interface: one Args struct per subcommand; doc comments are the `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::label::LabelMode;
use crate::llm::openai::{OptionScoring, PrefillMode};
use crate::llm::BackendKind;
use crate::revise::{LongPrompt, SftFormat};

/// cai: the Constitutional AI / RLAIF pipeline on real language models.
#[derive(Debug, Parser)]
#[command(name = "cai", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Errors with the backtraces libraries captured (as does CAI_DEBUG=1); without it an
    /// error is one line, whatever RUST_BACKTRACE says.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Critique → revision loops on red-team prompts: writes an SFT data set.
    Revise(ReviseArgs),
    /// K responses per prompt from a policy model, and the pairs among them for labelling.
    Sample(SampleArgs),
    /// AI preference labels: which of two responses is better under sampled principles.
    Label(LabelArgs),
    /// AI preference labels against human labels: agreement, kappa, calibration, position
    /// bias, per principle; optional Markdown report with plots.
    Compare(CompareArgs),
    /// Speed of the local backend (prompt, generation, batches, labelling, training) and of
    /// llama.cpp when installed, in one run.
    Bench(BenchArgs),
    /// Perplexity of a model on a text, computed as llama.cpp's llama-perplexity does
    /// (chunks of --ctx tokens, the second half of each scored); ends with `PPL = X +/- E`.
    Perplexity(PerplexityArgs),
    /// Two policies answer held-out prompts; the AI labeler (both orders) and the reward
    /// model judge: win rates with 95 % intervals and a Markdown report.
    Eval(crate::cli_eval::EvalArgs),
    /// Train a model: `cai train sft` (SL-CAI), `rm` (reward model), `ppo` or `dpo`.
    #[command(subcommand)]
    Train(crate::cli_train::TrainCommand),
    /// Stage outputs as TRL / OpenRLHF training sets (SFT or preference).
    Export(crate::cli_export::ExportArgs),
    /// Check or list a constitution.
    #[command(subcommand)]
    Constitution(ConstitutionCommand),
    /// Rewards of pairs or single responses from a trained reward model, as JSONL.
    Score(crate::cli_rm::ScoreArgs),
    /// The whole run in one command: revise → sft → sample → label → rm → ppo → eval (or dpo,
    /// or grpo), each stage's outputs in a run folder, done stages skipped on re-run, an
    /// interrupted one resumed, and a report.md.
    Pipeline(crate::cli_pipeline::PipelineArgs),
}

/// Arguments of `cai perplexity`.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// `default` (embedded SmolLM2-135M-Instruct), a .gguf file or a model folder.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Text to score (UTF-8).
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (llama-perplexity's --chunks); all by default.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConstitutionCommand {
    /// Validate constitution files; problems are printed as file:line:column.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List a constitution's principles and examples.
    Show { file: PathBuf },
}

/// Model selection shared by every stage that calls a model.
#[derive(Debug, Args, Clone, Default)]
pub struct ModelArgs {
    /// Backend that runs the model.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// `default` (embedded SmolLM2-135M-Instruct), a .gguf file, a model folder or a
    /// Hugging Face id from the local cache.
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Settings of `--backend openai` (an OpenAI-compatible server).
#[derive(Debug, Args, Clone, Default)]
pub struct ServerArgs {
    /// Server root, e.g. http://127.0.0.1:8000 or https://api.openai.com/v1 (with or without
    /// the trailing /v1, behind a path prefix or not); repeat to spread requests over several.
    /// HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY are honoured.
    #[arg(long = "base-url")]
    pub base_urls: Vec<String>,
    /// Environment variable with the API key [default: OPENAI_API_KEY].
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once [default: 64].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Longest wait for a whole answer in seconds, a slow trickle included [default: 600].
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Longest wait for a connection (TLS handshake included) in seconds [default: 10].
    #[arg(long)]
    pub connect_timeout: Option<f64>,
    /// PEM file of the CA certificates that sign the server's certificate (a private CA),
    /// trusted instead of the built-in roots [default: $SSL_CERT_FILE when set].
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Retries of a failed request (timeouts, connection errors, answers cut short or not JSON,
    /// 429, 5xx) [default: 6].
    #[arg(long)]
    pub retries: Option<u32>,
    /// First retry backoff in seconds, doubled each retry [default: 0.5].
    #[arg(long)]
    pub backoff: Option<f64>,
    /// How a prefill reaches the server: `continue` (a partial assistant message the server
    /// continues: llama.cpp, vLLM, Ollama), `instruct` (folded into the user turn as "reply with
    /// only the continuation": api.openai.com, which cannot continue one), `auto` (instruct for
    /// api.openai.com only) [default: auto].
    #[arg(long, value_enum)]
    pub prefill: Option<PrefillMode>,
    /// How answer options are scored: `first-token` (the chat answer's top 20 first-token
    /// log-probabilities: exact for one-token options such as "A"/"B"), `echo` (the options'
    /// own tokens through /v1/completions with echo + logprobs, vLLM: exact for options of any
    /// length, e.g. score mode's " 7/10" or likelihood mode's whole responses), `auto`
    /// (first-token, and echo for a request whose options the chat answer does not list)
    /// [default: auto].
    #[arg(long, value_enum)]
    pub option_scoring: Option<OptionScoring>,
    /// Request cache folder [default: ~/.cache/cai/requests].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the request cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// The sampling options beyond temperature and top-p, shared by every stage that generates
/// text (PPO rollouts excepted: they sample with temperature only, see `cai train ppo`).
/// Penalties look at the generated tokens only, never the prompt.
#[derive(Debug, Args, Clone, Default)]
pub struct SamplingArgs {
    /// Keep only the K most likely tokens (0 = off) [default: 0].
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Drop tokens less than P times as likely as the most likely one (0 = off) [default: 0].
    #[arg(long, value_name = "P")]
    pub min_p: Option<f64>,
    /// Divide the positive logits (multiply the negative ones) of tokens among the last
    /// --repeat-last-n generated tokens by this (1 = off; the default is the local engine's
    /// and is not sent to OpenAI-compatible servers, which keep their own) [default: 1.1].
    #[arg(long, value_name = "R")]
    pub repetition_penalty: Option<f64>,
    /// Window of --repetition-penalty in generated tokens (0 = off) [default: 64].
    #[arg(long, value_name = "N")]
    pub repeat_last_n: Option<usize>,
    /// Subtract this from the logit of every token already generated (OpenAI semantics,
    /// -2..2; 0 = off) [default: 0].
    #[arg(long, value_name = "A", allow_negative_numbers = true)]
    pub presence_penalty: Option<f64>,
    /// Subtract this times its count from the logit of every token already generated (OpenAI
    /// semantics, -2..2; 0 = off) [default: 0].
    #[arg(long, value_name = "A", allow_negative_numbers = true)]
    pub frequency_penalty: Option<f64>,
}

#[derive(Debug, Args)]
pub struct ReviseArgs {
    /// YAML file with any ReviseConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Constitution YAML [default: constitutions/harmless.yaml].
    #[arg(long)]
    pub constitution: Option<PathBuf>,
    /// Red-team prompts: JSONL (`prompt`, `messages` or HH-RLHF rows) or text, one per line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Output JSONL; an existing file is resumed [default: runs/revisions.jsonl].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Critique → revision rounds per prompt [default: 2].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seed for principle sampling and text sampling [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder with template overrides (initial.txt, critique.txt, revision.txt).
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Prompts processed together [default: 8].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Few-shot revision examples from the constitution per request [default: 2].
    #[arg(long)]
    pub few_shot: Option<usize>,
    /// Longest accepted prompt in tokens [default: 1024].
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// What to do with longer prompts [default: skip].
    #[arg(long, value_enum)]
    pub on_long_prompt: Option<LongPrompt>,
    /// Sampling temperature of all steps (0 = greedy) [default: 0.7].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Maximum new tokens of every step [defaults: answer 128, critique 96, revision 128].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling options of all steps.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Also write X.trl.jsonl (TRL conversational `messages` rows).
    #[arg(long = "format", value_enum)]
    pub formats: Vec<SftFormat>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Human-labelled pairs: HH-RLHF rows, TRL preference rows or our JSONL with `human`.
    #[arg(long)]
    pub human: PathBuf,
    /// AI label file from `cai label`; repeat to compare several (paired test vs the first).
    #[arg(long, required = true)]
    pub ai: Vec<PathBuf>,
    /// Folder for report.md, metrics.json and SVG plots (`--report` is the old spelling).
    #[arg(long, alias = "report")]
    pub out: Option<PathBuf>,
    /// Bootstrap resamples (0 skips intervals and tests).
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Calibration bins.
    #[arg(long, default_value_t = 10)]
    pub bins: usize,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model to measure (a GGUF file or `default`).
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Prompt length of the prompt-processing test.
    #[arg(long, default_value_t = 256)]
    pub prompt_tokens: usize,
    /// Tokens generated in the generation test.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Repetitions (the best is kept).
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// Concurrent sequences of the batched generation tests.
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    pub batches: Vec<usize>,
    /// Preference pairs (JSONL) for the labelling test.
    #[arg(long, default_value = "../shared/data/hh-harmless-dev.jsonl")]
    pub pairs: PathBuf,
    /// Pairs labelled (both orders each) with and without prefix reuse; 0 skips.
    #[arg(long, default_value_t = 8)]
    pub label_pairs: usize,
    /// Training steps measured (batch 2 x 128 tokens, full fine-tuning); 0 skips.
    #[arg(long, default_value_t = 2)]
    pub train_steps: usize,
    /// Also measure with quantized kernels only (no f32 weight copies).
    #[arg(long)]
    pub quantized_only: bool,
    /// Folder with llama.cpp's llama-bench and llama-batched-bench (default:
    /// ~/.cache/cai-peer/llama.cpp/build/bin, where /work/shared/tools/peer-llamacpp.sh builds).
    #[arg(long)]
    pub peer_bin: Option<PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// YAML file with any LabelConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Constitution YAML (comparison principles, few-shot comparisons).
    #[arg(long)]
    pub constitution: Option<PathBuf>,
    /// Pairs: our JSONL (prompt|conversation, response_a, response_b), HH-RLHF or TRL rows.
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Output JSONL; an existing file is resumed.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder with template overrides (feedback.txt, feedback_cot.txt).
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Old spelling of `--mode cot`.
    #[arg(long, hide = true)]
    pub cot: bool,
    /// How the feedback model is asked [default: direct].
    #[arg(long, value_enum)]
    pub mode: Option<LabelMode>,
    /// Comparison principles sampled per pair and averaged (ensemble).
    #[arg(long)]
    pub principles: Option<usize>,
    /// Ask only with response_a in slot (A) (default: both orders, averaged).
    #[arg(long)]
    pub one_order: bool,
    /// No-op: calibration (dividing out the model's slot prior, measured on a content-free
    /// pair, in direct mode) is the default.
    #[arg(long, hide = true)]
    pub calibrate: bool,
    /// Do not calibrate: raw option probabilities (direct mode calibrates by default).
    #[arg(long, conflicts_with = "calibrate")]
    pub no_calibrate: bool,
    /// Few-shot comparison examples [default: 4].
    #[arg(long)]
    pub few_shot: Option<usize>,
    /// CoT reasoning samples (self-consistency) [default: 4].
    #[arg(long)]
    pub samples: Option<usize>,
    /// CoT sampling temperature [default: 0.7].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampling options of the CoT reasoning.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Clamp per-sample probabilities to LO,HI (default 0.4,0.6 for CoT, none for direct).
    #[arg(long, value_parser = parse_range)]
    pub clamp: Option<(f64, f64)>,
    /// Longest accepted question in tokens [default: 2048].
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// Drop the oldest turns of long conversations instead of skipping them.
    #[arg(long)]
    pub truncate_long: bool,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Only the first N pairs.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once(',').ok_or("expected LO,HI")?;
    let lo: f64 = a.trim().parse().map_err(|e| format!("{e}"))?;
    let hi: f64 = b.trim().parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo > hi {
        return Err("need 0 <= LO <= HI <= 1".into());
    }
    Ok((lo, hi))
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Prompts: JSONL (`prompt`, `messages`, HH-RLHF rows) or text, one per line.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output JSONL (one record per prompt); pairs go to X.pairs.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Responses per prompt.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Pairs kept per prompt (default: all K(K-1)/2).
    #[arg(long)]
    pub pairs_per_prompt: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Best-of-N: sample N responses per prompt (sets --k), score them with
    /// --reward-model and mark the best; writes X.best.jsonl and no pairs.
    #[arg(long, requires = "reward_model")]
    pub best_of: Option<usize>,
    /// Reward model folder (`final/` of `cai train rm`) for --best-of.
    #[arg(long, requires = "best_of")]
    pub reward_model: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, short)]
    pub quiet: bool,
}
