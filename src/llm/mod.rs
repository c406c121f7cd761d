//! Language-model backends behind one trait, with our own request/response types.
//!
//! Every stage (revise, label, …) talks to a [`Backend`]: chat generation with sampling and the
//! exact log-probabilities of given option strings as the continuation of a prompt (what the
//! multiple-choice feedback of RLAIF needs). Backends are batch-first: a stage hands over a
//! whole batch and the backend decides how to run it.

pub mod local;
pub mod mock;
pub mod openai;
pub mod spec;

use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use crate::chat::Prompt;
pub use crate::manifest::ModelInfo;
pub use crate::sampling::{sample_token, Sampler, SamplingParams};
pub use spec::{open_backend, open_backend_with, BackendKind};

/// One generation request: `n` samples of a continuation of `prompt`.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    pub n: usize,
    /// Seed of this request's sampler; the same seed gives the same text.
    pub seed: u64,
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-sequence token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub tokens: usize,
    pub finish: FinishReason,
}

/// The answer to a [`GenerateRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub completions: Vec<Completion>,
}

/// Log-probabilities of each option string as the continuation of `prompt`.
#[derive(Debug, Clone)]
pub struct ChoiceRequest {
    pub prompt: Prompt,
    pub options: Vec<String>,
}

/// The answer to a [`ChoiceRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Natural-log probability of each option's full token sequence, in request order.
    pub logprobs: Vec<f64>,
    pub prompt_tokens: usize,
}

/// A prompt that does not fit in the model's context window (`needed` 0: the server that
/// refused it did not say by how much).
///
/// Stages catch this (via `downcast_ref`) to skip or truncate the record with a counted warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextOverflow {
    pub prompt_tokens: usize,
    pub needed: usize,
    pub context: usize,
}

impl fmt::Display for ContextOverflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A server that refused the prompt may not say how long it was.
        if self.needed == 0 {
            return write!(
                f,
                "prompt does not fit in the model's context of {} tokens",
                self.context
            );
        }
        write!(
            f,
            "prompt of {} tokens needs {} tokens with its completion, more than the model's context of {}",
            self.prompt_tokens, self.needed, self.context
        )
    }
}

impl std::error::Error for ContextOverflow {}

/// A language model that stages can query.
///
/// Results come back per request and in request order; one failing request (e.g. a
/// [`ContextOverflow`]) does not fail the others.
pub trait Backend: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// Number of tokens `prompt` takes, chat template included.
    fn count_tokens(&self, prompt: &Prompt) -> Result<usize>;

    /// Samples completions for every request.
    fn generate(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation>>;

    /// Exact log-probabilities of the options for every request.
    fn choose(&self, requests: &[ChoiceRequest]) -> Vec<Result<Choice>>;

    /// Counters a stage writes into its manifest (requests, retries, cache hits, …), for
    /// backends that have any.
    fn stats(&self) -> Option<serde_json::Value> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_option() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = |p: SamplingParams| p.validate().unwrap_err().to_string();
        let e = bad(SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        });
        assert!(e.contains("repetition_penalty"), "{e}");
        let e = bad(SamplingParams {
            min_p: 1.5,
            ..Default::default()
        });
        assert!(e.contains("min_p"), "{e}");
        let e = bad(SamplingParams {
            frequency_penalty: -2.5,
            ..Default::default()
        });
        assert!(e.contains("frequency_penalty"), "{e}");
    }
}
