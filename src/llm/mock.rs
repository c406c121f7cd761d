//! A deterministic stand-in model for tests: no weights, same answer for the same request.
//!
//! Generated text echoes the start of the last user message and a hash of the whole request,
//! so a golden file pins exactly which prompts a stage built. Option log-probabilities are a
//! fixed function of (prompt, option).

use anyhow::Result;

use super::backend::{
    Backend, Choice, ChoiceRequest, Completion, ContextOverflow, FinishReason, GenerateRequest,
    Generation,
};
use crate::chat::Prompt;
use crate::chat::Role;
use crate::hash::fnv1a;
use crate::manifest::ModelInfo;

/// Context window of the mock, in whitespace-separated words.
pub const MOCK_CONTEXT: usize = 4096;

pub struct MockBackend {
    info: ModelInfo,
}

impl Default for MockBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MockBackend {
    pub fn new() -> Self {
        Self {
            info: ModelInfo {
                backend: "mock".into(),
                name: "mock".into(),
                sha256: None,
                context: MOCK_CONTEXT,
            },
        }
    }
}

fn prompt_bytes(p: &Prompt) -> Vec<u8> {
    let mut out = Vec::new();
    for m in &p.messages {
        out.extend_from_slice(m.role.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(m.content.as_bytes());
        out.push(0);
    }
    out.extend_from_slice(p.prefill.as_bytes());
    out
}

fn words(p: &Prompt) -> usize {
    p.messages
        .iter()
        .map(|m| m.content.split_whitespace().count())
        .sum::<usize>()
        + p.prefill.split_whitespace().count()
}

fn overflow(p: &Prompt, extra: usize) -> Result<usize> {
    let n = words(p);
    if n + extra > MOCK_CONTEXT {
        return Err(ContextOverflow {
            prompt_tokens: n,
            needed: n + extra,
            context: MOCK_CONTEXT,
        }
        .into());
    }
    Ok(n)
}

impl Backend for MockBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_tokens(&self, prompt: &Prompt) -> Result<usize> {
        Ok(words(prompt))
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation>> {
        requests
            .iter()
            .map(|r| {
                let prompt_tokens = overflow(&r.prompt, r.params.max_tokens)?;
                let last_user = r
                    .prompt
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .map_or("", |m| m.content.as_str());
                let head: Vec<&str> = last_user.split_whitespace().take(6).collect();
                let bytes = prompt_bytes(&r.prompt);
                let completions = (0..r.n)
                    .map(|s| {
                        let h = fnv1a(&[&bytes, &r.seed.to_le_bytes(), &(s as u64).to_le_bytes()]);
                        let text = format!("mock reply to \"{}\" #{h:016x}", head.join(" "));
                        Completion {
                            tokens: text.split_whitespace().count(),
                            text,
                            finish: FinishReason::Stop,
                        }
                    })
                    .collect();
                Ok(Generation {
                    prompt_tokens,
                    completions,
                })
            })
            .collect()
    }

    fn choose(&self, requests: &[ChoiceRequest]) -> Vec<Result<Choice>> {
        requests
            .iter()
            .map(|r| {
                let prompt_tokens = overflow(&r.prompt, 1)?;
                let bytes = prompt_bytes(&r.prompt);
                let logprobs = r
                    .options
                    .iter()
                    .map(|o| -1.0 - (fnv1a(&[&bytes, o.as_bytes()]) % 1000) as f64 / 500.0)
                    .collect();
                Ok(Choice {
                    logprobs,
                    prompt_tokens,
                })
            })
            .collect()
    }
}
