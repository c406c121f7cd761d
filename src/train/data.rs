//! Tokenized SFT examples, padded batches, and the masked next-token loss.
//!
//! An example is a token sequence with a loss mask that is true on response tokens.
//! The model predicts token `p + 1` from position `p`; a prediction counts towards the
//! loss only when its *target* token is masked in. A batch therefore lists the flat
//! `(row, position)` indices of the counted predictions, and the loss selects those
//! rows from the hidden states (before the output projection, saving its cost on
//! prompt tokens) or from full logits; either way prompt tokens get no gradient.

use super::model::CausalLm;
use super::ops;
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// One tokenized training example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizedExample {
    /// Token ids of prompt and response.
    pub tokens: Vec<u32>,
    /// Same length as `tokens`; true on response tokens, which are the loss targets.
    pub loss_mask: Vec<bool>,
}

impl TokenizedExample {
    /// Number of predictions that count towards the loss.
    pub fn num_targets(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|m| **m).count()
    }
}

/// Examples ready for training, with counts of what preparation changed.
#[derive(Debug, Clone, Default)]
pub struct PreparedData {
    /// The usable examples.
    pub examples: Vec<TokenizedExample>,
    /// Examples cut to `max_len` tokens.
    pub truncated: usize,
    /// Examples dropped because no loss target was left (after truncation).
    pub dropped: usize,
}

/// Checks the examples, cuts those longer than `max_len` tokens (keeping the start),
/// and drops those without any loss target.
pub fn prepare_examples(examples: &[TokenizedExample], max_len: usize) -> Result<PreparedData> {
    ensure!(max_len >= 2, "max_len must be at least 2");
    let mut out = PreparedData::default();
    for (i, ex) in examples.iter().enumerate() {
        ensure!(
            ex.tokens.len() == ex.loss_mask.len(),
            "example {i}: {} tokens but {} loss-mask entries",
            ex.tokens.len(),
            ex.loss_mask.len()
        );
        let mut ex = ex.clone();
        if ex.tokens.len() > max_len {
            ex.tokens.truncate(max_len);
            ex.loss_mask.truncate(max_len);
            out.truncated += 1;
        }
        if ex.num_targets() == 0 {
            out.dropped += 1;
        } else {
            out.examples.push(ex);
        }
    }
    Ok(out)
}

/// A right-padded batch of examples.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids `[b, t]` (u32), padded with 0.
    pub input_ids: Tensor,
    /// `[b, t]` (u32), 1 on real tokens.
    pub attention_mask: Tensor,
    /// Flat indices `row * t + position` (u32) of the predictions that count.
    pub loss_positions: Tensor,
    /// Target token of each counted prediction (u32).
    pub targets: Tensor,
    /// Number of counted predictions.
    pub num_targets: usize,
    /// Number of real (non-padding) tokens.
    pub num_tokens: usize,
}

impl Batch {
    /// Pads `examples` to the longest one and collects the loss targets.
    pub fn new(examples: &[&TokenizedExample], device: &Device) -> Result<Self> {
        ensure!(!examples.is_empty(), "empty batch");
        let t = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
        ensure!(t > 0, "batch of empty examples");
        let b = examples.len();
        let mut ids = vec![0u32; b * t];
        let mut mask = vec![0u32; b * t];
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (row, ex) in examples.iter().enumerate() {
            for (p, &tok) in ex.tokens.iter().enumerate() {
                ids[row * t + p] = tok;
                mask[row * t + p] = 1;
                if p + 1 < ex.tokens.len() && ex.loss_mask[p + 1] {
                    positions.push((row * t + p) as u32);
                    targets.push(ex.tokens[p + 1]);
                }
            }
        }
        let num_targets = positions.len();
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            attention_mask: Tensor::from_vec(mask, (b, t), device)?,
            loss_positions: Tensor::from_vec(positions, num_targets, device)?,
            targets: Tensor::from_vec(targets, num_targets, device)?,
            num_targets,
            num_tokens: examples.iter().map(|e| e.tokens.len()).sum(),
        })
    }

    /// The rows of `xs: [b, t, d]` at the counted predictions, as `[num_targets, d]`.
    pub fn select_loss_rows(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        Ok(xs
            .reshape((b * t, d))?
            .index_select(&self.loss_positions, 0)?)
    }

    /// Summed cross-entropy of the counted predictions from full `logits: [b, t, vocab]`.
    pub fn nll_sum_from_logits(&self, logits: &Tensor) -> Result<Tensor> {
        nll_sum(&self.select_loss_rows(logits)?, &self.targets)
    }

    /// Summed cross-entropy of the counted predictions; the output projection runs only
    /// on the hidden states of those predictions, in slices of positions
    /// ([`CausalLm::target_logprobs`]).
    pub fn nll_sum<M: CausalLm + ?Sized>(&self, model: &M) -> Result<Tensor> {
        let hidden = model.forward_hidden(&self.input_ids, Some(&self.attention_mask))?;
        let rows = self.select_loss_rows(&hidden)?;
        Ok(model
            .target_logprobs(&rows, &self.targets, 1.0)?
            .sum_all()?
            .neg()?)
    }
}

/// Splits a micro-batch of `units` (each `(rows, longest row in tokens)`, kept whole: an
/// example, or the pairs of one conversation) into consecutive parts whose padded size,
/// rows × longest row, is at most `max_tokens`; a unit larger than the budget is a part of
/// its own. Without a budget the whole micro-batch is one part.
pub fn split_by_tokens(
    units: &[(usize, usize)],
    max_tokens: Option<usize>,
) -> Vec<std::ops::Range<usize>> {
    let Some(budget) = max_tokens else {
        return std::iter::once(0..units.len()).collect();
    };
    let mut parts = Vec::new();
    let (mut start, mut rows, mut longest) = (0, 0, 0);
    for (i, &(r, len)) in units.iter().enumerate() {
        let (new_rows, new_longest) = (rows + r, longest.max(len));
        if i > start && new_rows * new_longest > budget {
            parts.push(start..i);
            (start, rows, longest) = (i, r, len);
        } else {
            (rows, longest) = (new_rows, new_longest);
        }
    }
    if start < units.len() {
        parts.push(start..units.len());
    }
    parts
}

/// Summed negative log-likelihood of `targets: [n]` under `logits: [n, vocab]`, in f32
/// or wider (half-precision logits are upcast).
pub fn nll_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = match logits.dtype() {
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32)?,
        _ => logits.clone(),
    };
    let log_probs = ops::log_softmax_last_dim(&logits)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(picked.sum_all()?.neg()?)
}

/// Mean next-token loss over the counted predictions of `examples`, without gradients,
/// in batches of `batch_size`. Returns `(mean loss, number of predictions)`.
pub fn eval_loss<M: CausalLm + ?Sized>(
    model: &M,
    examples: &[TokenizedExample],
    batch_size: usize,
    device: &Device,
) -> Result<(f64, usize)> {
    let (mut total, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&TokenizedExample> = chunk.iter().collect();
        let batch = Batch::new(&refs, device)?;
        if batch.num_targets == 0 {
            continue;
        }
        let sum = batch.nll_sum(model)?.detach();
        total += sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += batch.num_targets;
    }
    Ok((
        if count == 0 {
            f64::NAN
        } else {
            total / count as f64
        },
        count,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(tokens: &[u32], mask: &[bool]) -> TokenizedExample {
        TokenizedExample {
            tokens: tokens.to_vec(),
            loss_mask: mask.to_vec(),
        }
    }

    #[test]
    fn batch_pads_right_and_targets_masked_tokens() -> Result<()> {
        let a = example(&[5, 6, 7, 8], &[false, false, true, true]);
        let b = example(&[9, 10], &[false, true]);
        let batch = Batch::new(&[&a, &b], &Device::Cpu)?;
        assert_eq!(
            batch.input_ids.to_vec2::<u32>()?,
            vec![vec![5, 6, 7, 8], vec![9, 10, 0, 0]]
        );
        assert_eq!(
            batch.attention_mask.to_vec2::<u32>()?,
            vec![vec![1, 1, 1, 1], vec![1, 1, 0, 0]]
        );
        // Position 1 predicts 7, position 2 predicts 8, row 1 position 0 predicts 10.
        assert_eq!(batch.loss_positions.to_vec1::<u32>()?, vec![1, 2, 4]);
        assert_eq!(batch.targets.to_vec1::<u32>()?, vec![7, 8, 10]);
        assert_eq!((batch.num_targets, batch.num_tokens), (3, 6));
        Ok(())
    }

    #[test]
    fn prepare_truncates_and_drops() -> Result<()> {
        let long = example(&[1, 2, 3, 4, 5], &[false, false, true, true, true]);
        let prompt_only_after_cut = example(&[1, 2, 3, 4], &[false, false, false, true]);
        let data = prepare_examples(&[long, prompt_only_after_cut], 3)?;
        assert_eq!(
            (data.examples.len(), data.truncated, data.dropped),
            (1, 2, 1)
        );
        assert_eq!(data.examples[0].tokens, vec![1, 2, 3]);
        assert!(prepare_examples(&[example(&[1, 2], &[true])], 8).is_err());
        Ok(())
    }

    #[test]
    fn token_budget_splits_whole_units() {
        let units = [(1, 100), (1, 300), (1, 50), (2, 200), (1, 900)];
        // Budget 600: [100, 300] pads to 2 × 300; adding 50 gives 3 × 300 > 600. [50, (2 ×
        // 200)] is 3 × 200; the 900-token unit exceeds the budget alone.
        assert_eq!(split_by_tokens(&units, Some(600)), vec![0..2, 2..4, 4..5]);
        assert_eq!(
            split_by_tokens(&units, None),
            std::iter::once(0..5).collect::<Vec<_>>()
        );
        assert_eq!(
            split_by_tokens(&units, Some(1)),
            vec![0..1, 1..2, 2..3, 3..4, 4..5]
        );
    }

    #[test]
    fn nll_sum_matches_hand_computation() -> Result<()> {
        let logits = Tensor::new(&[[0f32, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]], &Device::Cpu)?;
        let targets = Tensor::new(&[3u32, 0], &Device::Cpu)?;
        let expected = 4f32.ln() + ((2f32.exp() + 3.0).ln() - 2.0);
        let got = nll_sum(&logits, &targets)?.to_scalar::<f32>()?;
        assert!((got - expected).abs() < 1e-5);
        Ok(())
    }
}
