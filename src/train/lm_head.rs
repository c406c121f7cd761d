//! The output projection and the per-token log-probabilities of the language-model losses
//! (SFT's next-token loss, PPO's policy log-probs and PPO-ptx, DPO's sequence log-probs),
//! computed in slices of positions so that `[tokens, vocab]` logits never exist for a whole
//! batch.
//!
//! [`LmHead::target_logprobs`] cuts the rows into slices of [`rows_per_slice`] positions
//! (about [`SLICE_ELEMENTS`] logits each) and runs each slice through
//! [`checkpointed`](super::recompute::checkpointed): the forward pass keeps only the slice's
//! `[rows]` log-probabilities, and backward recomputes that slice's logits and log-softmax,
//! back-propagates through them and drops them before the next slice. The gradients are those
//! of the plain computation up to float summation order; the price is a second output
//! projection of the counted positions in backward. With 49 152 vocabulary entries
//! (SmolLM2) a batch of 4 × 1024 targets held 0.8 GB per `[tokens, vocab]` tensor, several of
//! them at once; a slice holds 32 MB.

use super::lora::LoraLinear;
use super::ops;
use super::recompute::{checkpointed, BlockFn, RecomputedGrads};
use candle_core::{DType, Result, Tensor, D};
use std::sync::Arc;

/// Logits per slice of [`LmHead::target_logprobs`]: 8 Mi f32 values, 32 MiB.
pub const SLICE_ELEMENTS: usize = 1 << 23;

/// Positions per slice for a vocabulary of `vocab` entries (at least 1).
pub fn rows_per_slice(vocab: usize) -> usize {
    (SLICE_ELEMENTS / vocab.max(1)).max(1)
}

/// The output projection `hidden → vocab`, with the final logit soft-capping of Gemma 2/3.
#[derive(Debug, Clone)]
pub struct LmHead {
    proj: LoraLinear,
    /// Final logits become `c · tanh(logits / c)`.
    softcap: Option<f64>,
    /// Positions per slice; `None`: [`rows_per_slice`] of the vocabulary.
    slice_rows: Option<usize>,
}

impl LmHead {
    /// The head projecting with `proj` (`[vocab, hidden]`), soft-capped at `softcap`.
    pub fn new(proj: LoraLinear, softcap: Option<f64>) -> Self {
        Self {
            proj,
            softcap,
            slice_rows: None,
        }
    }

    /// The same head computing log-probabilities `rows` positions at a time (tests use
    /// small slices to exercise the slicing on tiny vocabularies).
    pub fn with_slice_rows(mut self, rows: usize) -> Self {
        self.slice_rows = Some(rows.max(1));
        self
    }

    fn slice_rows(&self) -> Result<usize> {
        match self.slice_rows {
            Some(rows) => Ok(rows),
            None => Ok(rows_per_slice(self.vocab_size()?)),
        }
    }

    /// Holds a frozen projection in `dtype` (see [`LoraLinear::hold_frozen_in`]).
    pub fn hold_frozen_in(&mut self, dtype: DType) -> Result<()> {
        self.proj.hold_frozen_in(dtype)
    }

    /// Vocabulary size (rows of the projection).
    pub fn vocab_size(&self) -> Result<usize> {
        self.proj.weight().dim(0)
    }

    /// Logits `[.., vocab]` of hidden states `[.., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.proj.forward(hidden)?;
        match self.softcap {
            Some(c) => (logits / c)?.tanh()? * c,
            None => Ok(logits),
        }
    }

    /// Log-softmax `[n, vocab]` of the logits of `rows: [n, hidden]` at `temperature` (0 or
    /// 1 leave the logits as they are), in f32 or wider.
    fn log_probs(&self, rows: &Tensor, temperature: f64) -> Result<Tensor> {
        let mut logits = upcast(&self.logits(rows)?)?;
        if temperature > 0.0 && temperature != 1.0 {
            logits = (logits / temperature)?;
        }
        ops::log_softmax_last_dim(&logits)
    }

    /// `log p(targets[i] | rows[i])`, `[n]` in f32 or wider, for final hidden states `rows: [n, hidden]`
    /// and `targets: [n]` (u32), in slices of positions (see the module docs). Gradients
    /// of parameters reached only through a recomputed slice go to `sink`, as for the
    /// checkpointed blocks.
    pub fn target_logprobs(
        &self,
        rows: &Tensor,
        targets: &Tensor,
        temperature: f64,
        sink: &RecomputedGrads,
    ) -> Result<Tensor> {
        let n = rows.dim(0)?;
        let slice = self.slice_rows()?;
        let mut parts = Vec::with_capacity(n.div_ceil(slice));
        for start in (0..n).step_by(slice) {
            let len = slice.min(n - start);
            let targets = targets.narrow(0, start, len)?.unsqueeze(1)?;
            let head = self.clone();
            let f: BlockFn = Arc::new(move |x| {
                head.log_probs(x, temperature)?
                    .gather(&targets, 1)?
                    .squeeze(1)
            });
            parts.push(checkpointed(&rows.narrow(0, start, len)?, f, sink)?);
        }
        match parts.len() {
            0 => Tensor::zeros(0, DType::F32, rows.device()),
            1 => Ok(parts.remove(0)),
            _ => Tensor::cat(&parts, 0),
        }
    }

    /// Entropies `[n]` (f32 or wider, no gradient) of the next-token distributions at `rows`, at
    /// `temperature`, in slices of positions.
    pub fn entropies(&self, rows: &Tensor, temperature: f64) -> Result<Tensor> {
        let rows = rows.detach();
        let n = rows.dim(0)?;
        let slice = self.slice_rows()?;
        let mut parts = Vec::with_capacity(n.div_ceil(slice));
        for start in (0..n).step_by(slice) {
            let len = slice.min(n - start);
            let log_probs = self
                .log_probs(&rows.narrow(0, start, len)?, temperature)?
                .detach();
            parts.push((log_probs.exp()? * &log_probs)?.sum(D::Minus1)?.neg()?);
        }
        match parts.len() {
            0 => Tensor::zeros(0, DType::F32, rows.device()),
            _ => Tensor::cat(&parts, 0),
        }
    }
}

/// Half-precision logits in f32; f32 and f64 as they are.
pub fn upcast(logits: &Tensor) -> Result<Tensor> {
    match logits.dtype() {
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32),
        _ => Ok(logits.clone()),
    }
}
