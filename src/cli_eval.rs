//! Command-line interface of `cai eval`. Doc comments are the `--help`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::cli::{ModelArgs, SamplingArgs};
use crate::config::{read_yaml, set};
use crate::eval::EvalConfig;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// YAML file with any EvalConfig fields (labeler settings under `labeler:`); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The policy under test, slot A [default: runs/ppo/final].
    #[arg(long)]
    pub policy_a: Option<String>,
    /// The baseline, slot B [default: runs/sft/final].
    #[arg(long)]
    pub policy_b: Option<String>,
    /// Held-out prompts [default: data/sample-prompts.jsonl].
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// First N prompts only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output folder [default: runs/eval].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Reward model folder (`final/` of `cai train rm`) to score both answers.
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// Constitution of the AI labeler [default: constitutions/harmless.yaml].
    #[arg(long)]
    pub constitution: Option<PathBuf>,
    /// Backend of both policies and the labeler; `--model` is the labeler's model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// New tokens per answer [default: 64].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature of the answers [default: 0.7].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Sampling options of the answers.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Seed of the answers and the labeler [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress bars.
    /// A label within ±DELTA of 0.5 is a tie (½), not a win; the tie share is reported next
    /// to the win rate [default: 0.05].
    #[arg(long, value_name = "DELTA")]
    pub tie_margin: Option<f64>,
    #[arg(long, short)]
    pub quiet: bool,
}

impl EvalConfig {
    /// The config of a `cai eval` invocation: defaults < `--config` < flags.
    pub fn resolve(a: EvalArgs) -> Result<Self> {
        let mut c: Self = match &a.config {
            Some(p) => read_yaml(p)?,
            None => Self::default(),
        };
        set(&mut c.policy_a, a.policy_a);
        set(&mut c.policy_b, a.policy_b);
        set(&mut c.prompts, a.prompts);
        c.limit = a.limit.or(c.limit);
        set(&mut c.out, a.out);
        c.reward_model = a.reward_model.or(c.reward_model);
        set(&mut c.labeler.constitution, a.constitution);
        set(&mut c.labeler.backend, a.model.backend);
        set(&mut c.labeler.model, a.model.model);
        a.model.server.apply(&mut c.labeler.openai);
        set(&mut c.sampling.max_tokens, a.max_tokens);
        set(&mut c.sampling.temperature, a.temperature);
        a.sampling.apply(&mut c.sampling);
        if let Some(seed) = a.seed {
            c.seed = seed;
            c.labeler.seed = seed;
        }
        set(&mut c.tie_margin, a.tie_margin);
        c.quiet |= a.quiet;
        Ok(c)
    }
}
