//! Keys and values of the positions a sequence has processed, per layer, in preallocated
//! buffers that new positions are written into (no copy of the whole cache per token).
//!
//! Caches are cloned to share a computed prompt prefix (the two orders of a comparison,
//! several samples, several options). A clone shares the buffers; the first of the sharers to
//! append copies them (copy on write), so one sequence's positions never land in another's.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{CpuStorage, Device, Storage, Tensor};

/// Positions of room a buffer gets beyond what it must hold when it is (re)allocated.
const GROW: usize = 64;

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
        let need = self.len + k.dim(2)?;
        let l = self.write(layer, k, v)?;
        let (k_all, v_all) = (l.k.narrow(2, 0, need)?, l.v.narrow(2, 0, need)?);
        // The CPU's matmul reads the strided views in place; CUDA's batched matmul needs
        // contiguous operands.
        match k.device() {
            Device::Cpu => Ok((k_all, v_all)),
            _ => Ok((k_all.contiguous()?, v_all.contiguous()?)),
        }
    }

    /// CPU decoding: writes one position's keys and values (`kv_heads · head_dim` values each,
    /// head-major) to layer `layer` and hands `f` the buffers `[kv_heads, capacity, head_dim]`,
    /// the capacity, and the number of valid positions (the cached ones plus this one).
    pub(super) fn append_one<R>(
        &mut self,
        layer: usize,
        (k, v): (&[f32], &[f32]),
        (kv_heads, head_dim): (usize, usize),
        f: impl FnOnce(&[f32], &[f32], usize, usize) -> Result<R>,
    ) -> Result<R> {
        let row = |x: &[f32]| Tensor::from_slice(x, (1, kv_heads, 1, head_dim), &Device::Cpu);
        let need = self.len + 1;
        let l = self.write(layer, &row(k)?, &row(v)?)?;
        let (kg, _) = l.k.storage_and_layout();
        let (vg, _) = l.v.storage_and_layout();
        match (&*kg, &*vg) {
            (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) => {
                f(kd, vd, l.capacity(), need)
            }
            _ => bail!("internal error: CPU decoding on a cache that is not f32 on the CPU"),
        }
    }

    /// Makes layer `layer`'s buffers this cache's own and large enough, and writes `k`, `v`
    /// (`[1, kv_heads, t, head_dim]`, contiguous) at the positions after the cached ones.
    fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<&LayerKv> {
        let (pos, t) = (self.len, k.dim(2)?);
        let need = pos + t;
        let slot = &mut self.layers[layer];
        let writable = slot
            .as_mut()
            .and_then(Arc::get_mut)
            .is_some_and(|l| l.capacity() >= need);
        if !writable {
            let old = slot.take();
            // Room for GROW more positions, no doubling: many caches live at once (samples,
            // orders, stored prompt prefixes) and each copy costs only what it holds.
            let capacity = (need + GROW).min(self.limit.max(need));
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
        let l = slot.as_deref().expect("buffer set above");
        l.k.slice_set(k, 2, pos)?;
        l.v.slice_set(v, 2, pos)?;
        Ok(l)
    }

    /// Whether any layer's buffers are still shared with `other`'s.
    #[cfg(test)]
    pub(crate) fn shares_buffers_with(&self, other: &KvCache) -> bool {
        self.layers
            .iter()
            .zip(&other.layers)
            .any(|(a, b)| matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b)))
    }
}
