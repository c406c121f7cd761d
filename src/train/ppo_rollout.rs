//! Rollouts of PPO: responses sampled from the policy with a KV cache, and the batched
//! forward pass that gives every response token's log-probability, value and entropy.

use anyhow::Result;
use candle_core::{DType, IndexOp, Tensor};

use super::data::{Batch, TokenizedExample};
use super::model::{CausalLm, GenerationCache, Llama};
use super::reward::RewardHead;
use crate::sampling::sample_token;

/// One sampled response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Index of the prompt in the run's prompt set.
    pub prompt: usize,
    pub prompt_ids: Vec<u32>,
    /// Sampled tokens, the stop token included when one was produced.
    pub response_ids: Vec<u32>,
    /// Whether the response ended with a stop token (rather than at `max_new_tokens`).
    pub ended: bool,
}

/// How responses are sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutSampling {
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
}

/// Samples one response to `prompt_ids`; the uniform draws come from `rng`.
pub fn generate(
    model: &Llama,
    prompt_ids: &[u32],
    stop_ids: &[u32],
    sampling: RolloutSampling,
    rng: &mut impl rand::Rng,
) -> Result<(Vec<u32>, bool)> {
    let device = model.device();
    let mut cache = GenerationCache::new(model.num_layers());
    let input = Tensor::new(prompt_ids, device)?.unsqueeze(0)?;
    let mut logits = model.forward_cached(&input, &mut cache)?.detach();
    let mut out = Vec::with_capacity(sampling.max_new_tokens);
    loop {
        let t = logits.dim(1)?;
        let last = logits
            .i((0, t - 1))?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let token = sample_token(&last, sampling.temperature, sampling.top_p, rng.random());
        out.push(token);
        if stop_ids.contains(&token) {
            return Ok((out, true));
        }
        if out.len() >= sampling.max_new_tokens {
            return Ok((out, false));
        }
        let next = Tensor::new(&[token], device)?.unsqueeze(0)?;
        logits = model.forward_cached(&next, &mut cache)?.detach();
    }
}

/// Prompt + response as a training example whose targets are the response tokens.
pub fn rollout_example(r: &Rollout) -> TokenizedExample {
    let mut tokens = r.prompt_ids.clone();
    tokens.extend(&r.response_ids);
    let mut loss_mask = vec![false; r.prompt_ids.len()];
    loss_mask.extend(std::iter::repeat_n(true, r.response_ids.len()));
    TokenizedExample { tokens, loss_mask }
}

/// Per-token outputs of a forward pass over response tokens, flat in rollout order.
pub struct TokenOutputs {
    /// `[n]` log π(token | prefix) at the sampling temperature.
    pub logp: Tensor,
    /// `[n]` value estimates of the states before each token (when a head is given).
    pub values: Option<Tensor>,
    /// `[n]` entropies of the next-token distributions (when asked for).
    pub entropy: Option<Tensor>,
}

/// Runs `model` over the rollouts (right-padded batch) and reads the response tokens'
/// log-probabilities, and optionally values from `head` and entropies.
pub fn token_outputs(
    model: &Llama,
    head: Option<&RewardHead>,
    rollouts: &[&Rollout],
    temperature: f64,
    with_entropy: bool,
) -> Result<TokenOutputs> {
    let examples: Vec<TokenizedExample> = rollouts.iter().map(|r| rollout_example(r)).collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let batch = Batch::new(&refs, model.device())?;
    let hidden = model.forward_hidden(&batch.input_ids, Some(&batch.attention_mask))?;
    let rows = batch.select_loss_rows(&hidden)?;
    let logp = model.target_logprobs(&rows, &batch.targets, temperature)?;
    let values = match head {
        Some(h) => Some(h.forward(&rows)?.to_dtype(DType::F32)?),
        None => None,
    };
    let entropy = match with_entropy {
        true => Some(model.entropies(&rows, temperature)?),
        false => None,
    };
    Ok(TokenOutputs {
        logp,
        values,
        entropy,
    })
}

/// Splits a flat `[n]` tensor into one vector per rollout (lengths `lens`).
pub fn split_rows(flat: &Tensor, lens: &[usize]) -> Result<Vec<Vec<f64>>> {
    let all = flat.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    anyhow::ensure!(
        all.len() == lens.iter().sum::<usize>(),
        "{} per-token values for {} response tokens",
        all.len(),
        lens.iter().sum::<usize>()
    );
    let mut it = all.into_iter();
    Ok(lens
        .iter()
        .map(|&n| it.by_ref().take(n).collect())
        .collect())
}
