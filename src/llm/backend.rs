//! The `Backend` trait and our own request/response types, which every backend implements
//! and every stage speaks; `llm` re-exports them. They sit apart from `llm/mod.rs` so that the
//! backends import them without importing the module that picks a backend.

use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::chat::Prompt;
use crate::manifest::ModelInfo;
use crate::sampling::SamplingParams;

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
