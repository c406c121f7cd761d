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

/// Cuts an example longer than `max_len` tokens: the conversation loses tokens from its start
/// (keeping at least half of `max_len` for it when the response is long), then the response
/// loses tokens from its end. Returns whether anything was cut.
pub fn fit_example(ex: &mut TokenizedExample, max_len: usize) -> bool {
    let len = ex.tokens.len();
    if len <= max_len {
        return false;
    }
    let prompt = ex.loss_mask.iter().position(|&m| m).unwrap_or(len);
    let response = len - prompt;
    let keep_prompt = prompt.min((max_len / 2).max(max_len.saturating_sub(response)));
    let keep_response = response.min(max_len - keep_prompt);
    let start = prompt - keep_prompt;
    ex.tokens = ex.tokens[start..prompt + keep_response].to_vec();
    ex.loss_mask = ex.loss_mask[start..prompt + keep_response].to_vec();
    true
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

    #[test]
    fn fitting_cuts_the_conversation_start_then_the_response_end() {
        // 6 prompt + 4 response tokens into 8: the response fits whole, the prompt keeps
        // its last 4 (8 − 4 ≥ 8/2).
        let mut ex = example(6, 4);
        assert!(fit_example(&mut ex, 8));
        assert_eq!(ex.tokens, vec![2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(ex.loss_mask.iter().filter(|&&m| m).count(), 4);
        // 6 + 10 into 8: the prompt keeps 4 (half), the response its first 4.
        let mut ex = example(6, 10);
        assert!(fit_example(&mut ex, 8));
        assert_eq!(ex.tokens, vec![2, 3, 4, 5, 6, 7, 8, 9]);
        // A short prompt is kept whole: 2 + 10 into 8 keeps 2 + 6.
        let mut ex = example(2, 10);
        assert!(fit_example(&mut ex, 8));
        assert_eq!(ex.tokens, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        let mut ex = example(2, 3);
        assert!(!fit_example(&mut ex, 8));
        assert_eq!(ex.tokens.len(), 5);
    }
}
