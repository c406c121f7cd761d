//! Preference pairs for DPO as token sequences, and the per-sequence log-probabilities of
//! the responses under a causal LM (the `log π(y | x)` of Rafailov et al. 2023 eq. 7).
//!
//! A pair holds two [`TokenizedExample`]s (conversation + response, loss mask on the
//! response), so a sequence's log-probability is the sum of its masked next-token
//! log-probabilities. A micro-batch pads the A rows then the B rows into one forward pass.

use super::data::{Batch, TokenizedExample};
use super::model::CausalLm;
use crate::hash::Fnv1a;
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// A tokenized preference pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoPair {
    /// Conversation + response A; the mask is true on the response.
    pub a: TokenizedExample,
    /// Conversation + response B.
    pub b: TokenizedExample,
    /// P(A better): soft for AI labels, 0/1 for human and SL-CAI pairs.
    pub p_a: f64,
    /// Loss weight of the pair's source.
    pub weight: f64,
    /// Key of the conversation: pairs with the same key go into the same micro-batch.
    pub group: String,
}

/// Where a sequence starts its response (its prompt length) and its response length.
fn split_point(ex: &TokenizedExample) -> (usize, usize) {
    let len = ex.tokens.len();
    let prompt = ex.loss_mask.iter().position(|&m| m).unwrap_or(len);
    (prompt, len - prompt)
}

/// Keeps the last `keep_prompt` conversation tokens and the first `keep_response` response
/// tokens of `ex`; returns whether anything was cut.
fn cut(ex: &mut TokenizedExample, keep_prompt: usize, keep_response: usize) -> bool {
    let (prompt, response) = split_point(ex);
    let (keep_prompt, keep_response) = (keep_prompt.min(prompt), keep_response.min(response));
    if (keep_prompt, keep_response) == (prompt, response) {
        return false;
    }
    let range = prompt - keep_prompt..prompt + keep_response;
    ex.tokens = ex.tokens[range.clone()].to_vec();
    ex.loss_mask = ex.loss_mask[range].to_vec();
    true
}

/// Fits both sequences of a pair into `max_len` tokens with one cut of the conversation, so
/// that A and B are conditioned on the same prompt (TRL's `DPOTrainer` rule): when the longer
/// sequence does not fit, the conversation loses tokens from its start, sized by the longer
/// response (keeping at least half of `max_len` for it), in both sequences alike; then each
/// response loses tokens from its end. Returns how many of the two sequences were cut.
pub fn fit_pair(a: &mut TokenizedExample, b: &mut TokenizedExample, max_len: usize) -> usize {
    if a.tokens.len().max(b.tokens.len()) <= max_len {
        return 0;
    }
    let ((prompt_a, response_a), (prompt_b, response_b)) = (split_point(a), split_point(b));
    let longest = response_a.max(response_b);
    let keep_prompt = prompt_a
        .max(prompt_b)
        .min((max_len / 2).max(max_len.saturating_sub(longest)));
    let keep_response = max_len - keep_prompt;
    usize::from(cut(a, keep_prompt, keep_response))
        + usize::from(cut(b, keep_prompt, keep_response))
}

/// Log-probabilities of the responses of `rows` (each summed over its masked tokens) and
/// their token counts: `([rows] f32 tensor, counts)`. The tensor carries gradients when the
/// model has trainable parameters.
pub fn sequence_logps<M: CausalLm + ?Sized>(
    model: &M,
    rows: &[&TokenizedExample],
    device: &Device,
) -> Result<(Tensor, Vec<usize>)> {
    let batch = Batch::new(rows, device)?;
    let counts: Vec<usize> = rows.iter().map(|r| r.num_targets()).collect();
    ensure!(
        counts.iter().all(|&c| c > 0),
        "a response has no tokens to score"
    );
    let hidden = model.forward_hidden(&batch.input_ids, Some(&batch.attention_mask))?;
    let token_logp = model
        .target_logprobs(&batch.select_loss_rows(&hidden)?, &batch.targets, 1.0)?
        .unsqueeze(1)?;
    // The targets are in row order, so a 0/1 matrix [rows, targets] sums each row's share.
    let mut select = vec![0f32; rows.len() * batch.num_targets];
    let mut offset = 0;
    for (r, &c) in counts.iter().enumerate() {
        select[r * batch.num_targets + offset..r * batch.num_targets + offset + c].fill(1.0);
        offset += c;
    }
    let select = Tensor::from_vec(select, (rows.len(), batch.num_targets), device)?;
    Ok((select.matmul(&token_logp)?.squeeze(1)?, counts))
}

/// Summed log-probabilities `[a, b]` of every pair's responses, without gradients,
/// `batch_size` pairs per forward pass.
pub fn pair_logps<M: CausalLm + ?Sized>(
    model: &M,
    pairs: &[DpoPair],
    batch_size: usize,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Result<Vec<[f64; 2]>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size.max(1)) {
        let rows: Vec<&TokenizedExample> = chunk
            .iter()
            .map(|p| &p.a)
            .chain(chunk.iter().map(|p| &p.b))
            .collect();
        let (logps, _) = sequence_logps(model, &rows, device)?;
        let v = logps.detach().to_vec1::<f32>()?;
        let n = chunk.len();
        out.extend((0..n).map(|i| [f64::from(v[i]), f64::from(v[n + i])]));
        progress(out.len());
    }
    Ok(out)
}

/// FNV-1a hash of the pairs' tokens, masks, labels, weights and groups, as 16 hex digits.
pub fn pairs_fingerprint(pairs: &[DpoPair]) -> String {
    let mut hash = Fnv1a::default();
    let mut feed = |x: u64| hash.write_u64(x);
    for p in pairs {
        for ex in [&p.a, &p.b] {
            feed(ex.tokens.len() as u64);
            for (&t, &m) in ex.tokens.iter().zip(&ex.loss_mask) {
                feed(u64::from(t) << 1 | u64::from(m));
            }
        }
        feed(p.p_a.to_bits());
        feed(p.weight.to_bits());
        p.group.bytes().for_each(|b| feed(u64::from(b)));
    }
    hash.hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(prompt: usize, response: usize) -> TokenizedExample {
        TokenizedExample {
            tokens: (0..(prompt + response) as u32).collect(),
            loss_mask: (0..prompt + response).map(|i| i >= prompt).collect(),
        }
    }

    /// [`fit_pair`] of one example with itself (both sequences cut alike).
    fn fit_one(ex: &mut TokenizedExample, max_len: usize) -> bool {
        let mut twin = ex.clone();
        fit_pair(ex, &mut twin, max_len) > 0
    }

    #[test]
    fn fitting_cuts_the_conversation_start_then_the_response_end() {
        // 6 prompt + 4 response tokens into 8: the response fits whole, the prompt keeps
        // its last 4 (8 − 4 ≥ 8/2).
        let mut ex = example(6, 4);
        assert!(fit_one(&mut ex, 8));
        assert_eq!(ex.tokens, vec![2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(ex.loss_mask.iter().filter(|&&m| m).count(), 4);
        // 6 + 10 into 8: the prompt keeps 4 (half), the response its first 4.
        let mut ex = example(6, 10);
        assert!(fit_one(&mut ex, 8));
        assert_eq!(ex.tokens, vec![2, 3, 4, 5, 6, 7, 8, 9]);
        // A short prompt is kept whole: 2 + 10 into 8 keeps 2 + 6.
        let mut ex = example(2, 10);
        assert!(fit_one(&mut ex, 8));
        assert_eq!(ex.tokens, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        let mut ex = example(2, 3);
        assert!(!fit_one(&mut ex, 8));
        assert_eq!(ex.tokens.len(), 5);
    }

    #[test]
    fn dpo_pair_sees_one_prompt_when_responses_differ_in_length() {
        // Prompt tokens 0..10, response A 10..16 (6 tokens), response B 10..12 (2 tokens),
        // into 12. The longer response sets the cut: keep max(12/2, 12 − 6) = 6 prompt
        // tokens (4..10) in both. A = 4..16 (12 tokens, nothing of its response lost), B =
        // 4..12 (8 tokens), although B alone (12 tokens) would have fit whole.
        let (mut a, mut b) = (example(10, 6), example(10, 2));
        assert_eq!(fit_pair(&mut a, &mut b, 12), 2);
        assert_eq!(a.tokens, (4..16).collect::<Vec<u32>>());
        assert_eq!(b.tokens, (4..12).collect::<Vec<u32>>());
        let prompt = |ex: &TokenizedExample| {
            let start = ex.loss_mask.iter().position(|&m| m).unwrap();
            ex.tokens[..start].to_vec()
        };
        assert_eq!(prompt(&a), prompt(&b));
        assert_eq!((a.num_targets(), b.num_targets()), (6, 2));
        // A very long response: the prompt keeps half (6: 4..10) in both, A's response its
        // first 6 tokens, B's 2 tokens whole.
        let (mut a, mut b) = (example(10, 30), example(10, 2));
        assert_eq!(fit_pair(&mut a, &mut b, 12), 2);
        assert_eq!(a.tokens, (4..16).collect::<Vec<u32>>());
        assert_eq!(b.tokens, (4..12).collect::<Vec<u32>>());
        // A pair that fits is untouched.
        let (mut a, mut b) = (example(4, 6), example(4, 2));
        assert_eq!(fit_pair(&mut a, &mut b, 12), 0);
        assert_eq!((a.tokens.len(), b.tokens.len()), (10, 6));
    }
}
