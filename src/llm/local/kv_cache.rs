//! Keys and values of the positions a sequence has processed, per layer, in preallocated
//! buffers that new positions are written into (no copy of the whole cache per token).
//!
//! Caches are cloned to share a computed prompt prefix (the two orders of a comparison,
//! several samples, several options). A clone shares the buffers; the first of the sharers to
//! append copies them (copy on write), so one sequence's positions never land in another's.

use std::sync::Arc;

use anyhow::Result;
use candle_core::{Device, Tensor};

/// Positions a buffer grows by at least (it also at least doubles).
const GROW: usize = 128;

/// One layer's buffers `[1, kv_heads, capacity, head_dim]`, valid up to the cache's length.
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

impl LayerKv {
    fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }
}

/// A sequence's cache: cheap to clone (buffers are shared until written).
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<Arc<LayerKv>>>,
    len: usize,
    /// Positions the buffers may hold at most (the model's context).
    limit: usize,
}

impl KvCache {
    pub(super) fn new(layers: usize, limit: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| None).collect(),
            len: 0,
            limit,
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the first `n` positions (a shared prefix of another sequence).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n < self.len {
            self.len = n;
        }
        Ok(())
    }

    /// Marks `t` more positions as cached, once every layer has appended them.
    pub(super) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Writes layer `layer`'s keys and values `[1, kv_heads, t, head_dim]` (contiguous) for the
    /// `t` positions after the cached ones and returns the keys and values of all positions.
    pub(super) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (pos, t) = (self.len, k.dim(2)?);
        let need = pos + t;
        let slot = &mut self.layers[layer];
        let writable = slot
            .as_mut()
            .and_then(Arc::get_mut)
            .is_some_and(|l| l.capacity() >= need);
        if !writable {
            let old = slot.take();
            let capacity = match &old {
                Some(l) => need.max(2 * l.capacity()).max(need + GROW),
                None => need.max(GROW),
            }
            .min(self.limit.max(need));
            let (kv_heads, head_dim) = (k.dim(1)?, k.dim(3)?);
            let fresh = |like: &Tensor| {
                Tensor::zeros(
                    (1, kv_heads, capacity, head_dim),
                    like.dtype(),
                    like.device(),
                )
            };
            let fresh = LayerKv {
                k: fresh(k)?,
                v: fresh(v)?,
            };
            if let (Some(old), true) = (&old, pos > 0) {
                fresh
                    .k
                    .slice_set(&old.k.narrow(2, 0, pos)?.contiguous()?, 2, 0)?;
                fresh
                    .v
                    .slice_set(&old.v.narrow(2, 0, pos)?.contiguous()?, 2, 0)?;
            }
            *slot = Some(Arc::new(fresh));
        }
        let l = slot.as_ref().expect("buffer set above");
        l.k.slice_set(k, 2, pos)?;
        l.v.slice_set(v, 2, pos)?;
        let (k_all, v_all) = (l.k.narrow(2, 0, need)?, l.v.narrow(2, 0, need)?);
        // The CPU's matmul reads the strided views in place; CUDA's batched matmul needs
        // contiguous operands.
        match k.device() {
            Device::Cpu => Ok((k_all, v_all)),
            _ => Ok((k_all.contiguous()?, v_all.contiguous()?)),
        }
    }

    /// Whether the layers' buffers are distinct from `other`'s (no sharing left).
    #[cfg(test)]
    pub(crate) fn shares_buffers_with(&self, other: &KvCache) -> bool {
        self.layers
            .iter()
            .zip(&other.layers)
            .any(|(a, b)| matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b)))
    }
}
