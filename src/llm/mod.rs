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
///
/// The local engine applies them in the order of [`sampling`]'s docs: penalties, temperature,
/// top-k, top-p, min-p. Every option has a neutral value that turns it off; the OpenAI
/// backend sends the options outside the chat-completions standard only when set away from it.
///
/// The defaults add one thing to plain temperature/top-p sampling: a repetition penalty of 1.1
/// over the last 64 generated tokens (llama.cpp's long-standing default). On the first 40
/// red-team dev prompts with the quickstart's revise settings it took the share of texts that
/// loop (a 3-word phrase 3 or more times, `scripts/loop-share.sh`) from 25.8 % to 0 %, where
/// 1.05 left 3.3 % and frequency penalty 0.5 alone 0.8 % (see the README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling threshold in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// Drop tokens less than `min_p` times as likely as the most likely one, in [0, 1];
    /// 0 disables it.
    pub min_p: f64,
    /// Repetition penalty (CTRL, llama.cpp's `repeat_penalty`), > 0: the logits of tokens among
    /// the last `repeat_last_n` generated ones are divided by it when positive and multiplied
    /// by it when negative; 1 disables it.
    pub repetition_penalty: f64,
    /// How many of the last generated tokens the repetition penalty looks at; 0 disables it.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token the completion already holds (OpenAI
    /// semantics), in [-2, 2]; 0 disables it.
    pub presence_penalty: f64,
    /// Subtracted from a token's logit once per occurrence in the completion so far (OpenAI
    /// semantics), in [-2, 2]; 0 disables it.
    pub frequency_penalty: f64,
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
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.1,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            max_tokens: 128,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Whether any logit penalty is set away from its neutral value.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// Rejects values the sampler cannot use, naming the field.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("sampling: {what}"))
            }
        };
        check(self.temperature >= 0.0, "temperature must not be negative")?;
        check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p must lie in (0, 1]",
        )?;
        check(
            (0.0..=1.0).contains(&self.min_p),
            "min_p must lie in [0, 1]",
        )?;
        check(
            self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite(),
            "repetition_penalty must be positive (1 disables it)",
        )?;
        check(
            (-2.0..=2.0).contains(&self.presence_penalty)
                && (-2.0..=2.0).contains(&self.frequency_penalty),
            "presence_penalty and frequency_penalty must lie in [-2, 2]",
        )
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
