//! Language-model backends behind one trait, with our own request/response types.
//!
//! Every stage (revise, label, …) talks to a [`Backend`]: chat generation with sampling and the
//! exact log-probabilities of given option strings as the continuation of a prompt (what the
//! multiple-choice feedback of RLAIF needs). Backends are batch-first: a stage hands over a
//! whole batch and the backend decides how to run it.

pub mod local;
pub mod mock;
pub mod openai;
pub mod sampling;
pub mod spec;

use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::chat::ChatMessage;

pub use sampling::{sample_token, Sampler};
pub use spec::{open_backend, open_backend_with, BackendKind, ModelSpec};

/// A prompt: the conversation so far, plus optional text the assistant's reply starts with.
///
/// `prefill` is rendered after the generation prompt of the chat template, so the model
/// continues it (e.g. "The answer is (" before scoring the options "A" and "B").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prompt {
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefill: String,
}

impl Prompt {
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            prefill: String::new(),
        }
    }
}

/// Sampling settings of one generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling threshold in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Maximum number of new tokens.
    pub max_tokens: usize,
    /// Generation stops when any of these strings appears; it is not part of the output.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            max_tokens: 128,
            stop: Vec::new(),
        }
    }
}

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

/// A prompt that does not fit in the model's context window.
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
        write!(
            f,
            "prompt of {} tokens needs {} tokens with its completion, more than the model's context of {}",
            self.prompt_tokens, self.needed, self.context
        )
    }
}

impl std::error::Error for ContextOverflow {}

/// What a run records about the model it used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Backend name: "local", "mock", ….
    pub backend: String,
    /// The model as the user named it (path or id).
    pub name: String,
    /// sha256 of the weights file, when there is one file.
    pub sha256: Option<String>,
    /// Context window in tokens.
    pub context: usize,
}

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
