//! A llama-architecture model running on quantized GGUF weights (llama.cpp's file format),
//! with the KV cache held outside the weights so prompt prefixes can be shared.
//!
//! The weights are immutable and shared between threads; each sequence owns a [`KvCache`].
//! Cloning a cache is cheap (tensors are reference counted), which is how the two orders of a
//! comparison, several samples, or several options reuse one computed prefix.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{gguf_file, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::rotary_emb::rope_i;
use rayon::prelude::*;

use super::decode_attention::{attend_one, rope_interleaved, Heads};
use super::kv_cache::KvCache;
use super::qmatmul::{rows_matmul, RowsMatMul};

/// Shape hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaShape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
    pub context: usize,
}

/// Rows at or above which a projection uses the f32 copy of its weights (a cache-blocked gemm)
/// instead of the quantized dot products, which win only for one or a few rows.
const GEMM_ROWS: usize = 8;

/// A projection kept quantized (streams the least memory: best for one or a few rows) and,
/// when `dense` is on, also as f32 weights (a cache-blocked gemm: best for prompt chunks).
struct Linear {
    quant: Quant,
    dense: Option<Tensor>,
    out_features: usize,
}

enum Quant {
    /// Our batched CPU kernel (see `qmatmul`).
    Rows(Box<dyn RowsMatMul>),
    /// candle's own kernel (GPU, or a type without a batched kernel).
    Candle(QMatMul),
}

impl Linear {
    fn new(q: QTensor, dense: bool) -> Result<Self> {
        let out_features = q.shape().dims2()?.0;
        let dense = match dense {
            true => Some(q.dequantize(&q.device())?),
            false => None,
        };
        let quant = match (q.device().is_cpu(), rows_matmul(&q)?) {
            (true, Some(k)) => Quant::Rows(k),
            _ => Quant::Candle(QMatMul::from_qtensor(q)?),
        };
        Ok(Self {
            quant,
            dense,
            out_features,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, true)
    }

    /// Always the quantized kernel, whatever the row count: batched decoding uses it so that a
    /// sequence's numbers do not depend on how many others share its batch.
    fn forward_quant(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    fn forward_with(&self, x: &Tensor, allow_dense: bool) -> Result<Tensor> {
        let k = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / k;
        let mut shape = x.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = self.out_features;
        let dense = self
            .dense
            .as_ref()
            .filter(|_| allow_dense && rows >= GEMM_ROWS);
        if let Some(w) = dense {
            // 2-D product against the transposed view: gemm reads it in place, no copy.
            let y = x.contiguous()?.reshape((rows, k))?.matmul(&w.t()?)?;
            return Ok(y.reshape(shape)?);
        }
        match &self.quant {
            Quant::Candle(q) => Ok(q.forward(x)?),
            Quant::Rows(k) => {
                let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
                let mut dst = vec![0f32; rows * self.out_features];
                k.matmul(&xs, rows, &mut dst);
                Ok(Tensor::from_vec(dst, shape, x.device())?)
            }
        }
    }
}

/// Projections of the same input (q, k, v; or gate, up). When their weights share a quantized
/// type they are stored as one matrix of stacked rows and run as one product: one pass over
/// the activations and one parallel section instead of several. Each output value is the same
/// row-by-row dot product either way.
struct Fused {
    linears: Vec<Linear>,
    widths: Vec<usize>,
}

impl Fused {
    fn new(parts: Vec<QTensor>, dense: bool) -> Result<Self> {
        let widths = parts
            .iter()
            .map(|q| Ok(q.shape().dims2()?.0))
            .collect::<Result<Vec<_>>>()?;
        let same_type = parts.windows(2).all(|w| w[0].dtype() == w[1].dtype());
        let linears = match same_type && parts.len() > 1 {
            true => vec![Linear::new(stack_rows(&parts)?, dense)?],
            false => parts
                .into_iter()
                .map(|q| Linear::new(q, dense))
                .collect::<Result<_>>()?,
        };
        Ok(Self { linears, widths })
    }

    /// One output per part, in the order given to `new`.
    fn forward_with(&self, x: &Tensor, allow_dense: bool) -> Result<Vec<Tensor>> {
        if self.linears.len() == self.widths.len() {
            return self
                .linears
                .iter()
                .map(|l| l.forward_with(x, allow_dense))
                .collect();
        }
        let y = self.linears[0].forward_with(x, allow_dense)?;
        let mut start = 0;
        self.widths
            .iter()
            .map(|&w| {
                let part = y.narrow(D::Minus1, start, w)?;
                start += w;
                Ok(part)
            })
            .collect()
    }
}

/// One quantized matrix holding the rows of `parts` (same type and row length) in order.
fn stack_rows(parts: &[QTensor]) -> Result<QTensor> {
    let k = parts[0].shape().dims2()?.1;
    let mut rows = 0;
    let mut bytes = Vec::new();
    for q in parts {
        let (n, kq) = q.shape().dims2()?;
        if kq != k {
            bail!("cannot stack projections with rows of {k} and {kq} values");
        }
        rows += n;
        bytes.extend_from_slice(&q.data()?);
    }
    // candle reads the bytes in place as blocks: they must be borrowed (an owned buffer is
    // dropped before it is read) and aligned for the block type (8 bytes covers them all).
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: `words` spans at least `bytes.len()` bytes and u64 has no invalid bit patterns.
    let aligned =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8) };
    aligned[..bytes.len()].copy_from_slice(&bytes);
    let data = std::borrow::Cow::Borrowed(&aligned[..bytes.len()]);
    let storage = QStorage::from_data(data, &parts[0].device(), parts[0].dtype())?;
    Ok(QTensor::new(storage, (rows, k))?)
}

struct Layer {
    attn_norm: Tensor,
    /// q, k, v.
    qkv: Fused,
    o: Linear,
    ffn_norm: Tensor,
    /// gate, up.
    gate_up: Fused,
    down: Linear,
}

impl Layer {
    /// The feed-forward block: down(silu(gate(h)) · up(h)).
    fn mlp(&self, h: &Tensor, allow_dense: bool) -> Result<Tensor> {
        let gu = self.gate_up.forward_with(h, allow_dense)?;
        let g = candle_nn::ops::silu(&gu[0])?;
        self.down.forward_with(&(g * &gu[1])?, allow_dense)
    }
}

/// The loaded model.
pub struct GgufLlama {
    pub shape: LlamaShape,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    /// On the CPU: the rotary tables as plain values for the decoding fast path.
    rope_host: Option<(Vec<f32>, Vec<f32>)>,
    device: Device,
}

fn md_u32(c: &gguf_file::Content, key: &str, path: &Path) -> Result<usize> {
    c.metadata
        .get(key)
        .ok_or_else(|| anyhow!("{}: no `{key}` in GGUF metadata", path.display()))?
        .to_u32()
        .map(|v| v as usize)
        .with_context(|| format!("{}: `{key}` is not an integer", path.display()))
}

fn md_f32(c: &gguf_file::Content, key: &str) -> Option<f32> {
    c.metadata.get(key).and_then(|v| v.to_f32().ok())
}

impl GgufLlama {
    /// Loads the weights of a llama-architecture GGUF file already opened as `content`.
    /// `dense` also keeps f32 copies of the weights for multi-row products (≈4 bytes per
    /// parameter more memory, several times faster prompt processing on CPU).
    pub fn load(
        content: &gguf_file::Content,
        path: &Path,
        device: &Device,
        dense: bool,
    ) -> Result<Self> {
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        if arch != "llama" {
            bail!(
                "{}: architecture `{arch}` is not supported by the local backend (llama is); \
                 serve it with an OpenAI-compatible server instead",
                path.display()
            );
        }
        let heads = md_u32(content, "llama.attention.head_count", path)?;
        let hidden = md_u32(content, "llama.embedding_length", path)?;
        let head_dim =
            md_u32(content, "llama.rope.dimension_count", path).unwrap_or(hidden / heads);
        let shape = LlamaShape {
            vocab: 0,
            hidden,
            layers: md_u32(content, "llama.block_count", path)?,
            heads,
            kv_heads: md_u32(content, "llama.attention.head_count_kv", path).unwrap_or(heads),
            head_dim,
            rope_theta: md_f32(content, "llama.rope.freq_base").unwrap_or(10_000.0),
            rms_eps: md_f32(content, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5)
                as f64,
            context: md_u32(content, "llama.context_length", path).unwrap_or(2048),
        };
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut tensor = |name: &str| -> Result<QTensor> {
            content
                .tensor(&mut file, name, device)
                .with_context(|| format!("{}: cannot read tensor `{name}`", path.display()))
        };
        let tied = !content.tensor_infos.contains_key("output.weight");
        Self::from_tensors(shape, tied, &mut tensor, device, dense)
    }

    /// Builds the model from tensors in GGUF naming (`token_embd.weight`, `blk.N.attn_q.weight`,
    /// ...; q/k rows in llama.cpp's interleaved rotary order) handed out by `tensor`.
    /// `tied`: the output projection reuses the token embeddings (no `output.weight`).
    pub(super) fn from_tensors(
        shape: LlamaShape,
        tied: bool,
        tensor: &mut dyn FnMut(&str) -> Result<QTensor>,
        device: &Device,
        dense: bool,
    ) -> Result<Self> {
        let embed_q = tensor("token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let vocab = embed.dim(0)?;
        let output = match tied {
            false => Linear::new(tensor("output.weight")?, dense)?,
            true => Linear::new(embed_q, dense)?,
        };
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let mut layers = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let p = format!("blk.{i}");
            let mut w = |name: &str| tensor(&format!("{p}.{name}.weight"));
            layers.push(Layer {
                attn_norm: w("attn_norm")?.dequantize(device)?,
                qkv: Fused::new(vec![w("attn_q")?, w("attn_k")?, w("attn_v")?], dense)?,
                o: Linear::new(w("attn_output")?, dense)?,
                ffn_norm: w("ffn_norm")?.dequantize(device)?,
                gate_up: Fused::new(vec![w("ffn_gate")?, w("ffn_up")?], dense)?,
                down: Linear::new(w("ffn_down")?, dense)?,
            });
        }
        let (cos, sin) = rope_tables(&shape, device)?;
        let rope_host = match device.is_cpu() {
            true => Some((cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?)),
            false => None,
        };
        Ok(Self {
            shape: LlamaShape { vocab, ..shape },
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            rope_host,
            device: device.clone(),
        })
    }

    /// A cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.shape.layers, self.shape.context)
    }

    /// Runs `tokens` after the positions already in `cache` and appends them to it.
    ///
    /// Returns logits `[tokens.len(), vocab]` when `all_positions`, else `[1, vocab]` for the
    /// last position only (saves the output projection over the prompt).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor> {
        if tokens.len() == 1 && self.rope_host.is_some() {
            // One token: the decoding path (same numbers as `decode_batch`).
            return self.decode_batch(tokens, &mut [cache]);
        }
        on_pool(|| self.forward_on_pool(tokens, cache, all_positions))
    }

    fn forward_on_pool(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all_positions: bool,
    ) -> Result<Tensor> {
        let t = tokens.len();
        if t == 0 {
            bail!("internal error: forward over zero tokens");
        }
        let pos = cache.len();
        if pos + t > self.shape.context {
            bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                pos + t,
                self.shape.context
            );
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.unsqueeze(0)?; // [1, t, hidden]
        let mask = causal_mask(t, pos, &self.device)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.shape.rms_eps as f32)?;
            let a = self.attention(layer, &h, mask.as_ref(), cache, li)?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.shape.rms_eps as f32)?;
            x = (x + layer.mlp(&h, true)?)?;
        }
        cache.advance(t);
        let x = if all_positions {
            x
        } else {
            x.i((.., t - 1..t, ..))?
        };
        let x = candle_nn::ops::rms_norm(&x.contiguous()?, &self.norm, self.shape.rms_eps as f32)?;
        Ok(self.output.forward(&x)?.squeeze(0)?)
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        li: usize,
    ) -> Result<Tensor> {
        let qkv = layer.qkv.forward_with(x, true)?;
        let y = self.attend(&qkv[0], &qkv[1], &qkv[2], mask, cache, li)?;
        layer.o.forward(&y)
    }

    /// Attention of one sequence's new positions `[1, t, ·]` over its cache plus themselves.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        li: usize,
    ) -> Result<Tensor> {
        let s = &self.shape;
        let pos = cache.len();
        let (b, t, _) = q.dims3()?;
        let heads = |x: &Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, n, s.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let q = rope_i(&heads(q, s.heads)?, &cos, &sin)?;
        let k = rope_i(&heads(k, s.kv_heads)?, &cos, &sin)?;
        let v = heads(v, s.kv_heads)?;
        let (k, v) = cache.append(li, &k, &v)?;
        // Grouped-query attention without copying keys and values per query head: the `n`
        // query heads sharing a key/value head become `n * t` query rows of that head.
        let n = s.heads / s.kv_heads;
        let q = q.reshape((b, s.kv_heads, n * t, s.head_dim))?;
        let scale = 1.0 / (s.head_dim as f64).sqrt();
        let mut att = (q.matmul(&k.t()?)? * scale)?; // [b, kv, n * t, keys]
        if let Some(mask) = mask {
            let keys = mask.dim(1)?;
            let mask = mask
                .unsqueeze(0)?
                .expand((n, t, keys))?
                .reshape((n * t, keys))?;
            att = att.broadcast_add(&mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // [b, kv, n * t, head_dim]
        let y = y.reshape((b, s.heads, t, s.head_dim))?;
        Ok(y.transpose(1, 2)?.reshape((b, t, s.heads * s.head_dim))?)
    }

    /// One new token for each of several sequences: the projections run as one batch, the
    /// attention per sequence over its own cache. Returns logits `[caches.len(), vocab]`.
    pub fn decode_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        on_pool(|| self.decode_batch_on_pool(tokens, caches))
    }

    fn decode_batch_on_pool(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let b = tokens.len();
        if b == 0 || b != caches.len() {
            bail!("internal error: {b} tokens for {} caches", caches.len());
        }
        if let Some(c) = caches.iter().find(|c| c.len() + 1 > self.shape.context) {
            bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                c.len() + 1,
                self.shape.context
            );
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.unsqueeze(1)?; // [b, 1, hidden]
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.shape.rms_eps as f32)?;
            let qkv = layer.qkv.forward_with(&h, false)?;
            let y = match &self.rope_host {
                Some(rope) => self.attend_decode_cpu(&qkv, rope, caches, li)?,
                None => {
                    let mut ys = Vec::with_capacity(b);
                    for (j, cache) in caches.iter_mut().enumerate() {
                        let one = |i: usize| qkv[i].narrow(0, j, 1);
                        ys.push(self.attend(&one(0)?, &one(1)?, &one(2)?, None, cache, li)?);
                    }
                    Tensor::cat(&ys, 0)?
                }
            };
            x = (x + layer.o.forward_quant(&y)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.shape.rms_eps as f32)?;
            x = (x + layer.mlp(&h, false)?)?;
        }
        for c in caches.iter_mut() {
            c.advance(1);
        }
        let x = candle_nn::ops::rms_norm(&x.contiguous()?, &self.norm, self.shape.rms_eps as f32)?;
        Ok(self.output.forward_quant(&x)?.squeeze(1)?)
    }
}

impl GgufLlama {
    /// CPU decoding attention: each sequence's new position over its cache, on plain slices
    /// (see `decode_attention`), sequences in parallel. `qkv`: `[b, 1, ·]` projections.
    fn attend_decode_cpu(
        &self,
        qkv: &[Tensor],
        (cos, sin): &(Vec<f32>, Vec<f32>),
        caches: &mut [&mut KvCache],
        li: usize,
    ) -> Result<Tensor> {
        let s = &self.shape;
        let shape = Heads {
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
        };
        let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let (mut q, mut k, v) = (values(&qkv[0])?, values(&qkv[1])?, values(&qkv[2])?);
        let (qw, kw, half) = (
            s.heads * s.head_dim,
            s.kv_heads * s.head_dim,
            s.head_dim / 2,
        );
        let b = caches.len();
        let mut y = vec![0f32; b * qw];
        y.par_chunks_mut(qw)
            .zip(q.par_chunks_mut(qw))
            .zip(k.par_chunks_mut(kw))
            .zip(v.par_chunks(kw))
            .zip(caches.par_iter_mut())
            .try_for_each(|((((y, q), k), v), cache)| -> Result<()> {
                let angles = cache.len() * half..(cache.len() + 1) * half;
                let (c, sn) = (&cos[angles.clone()], &sin[angles]);
                rope_interleaved(q, s.head_dim, c, sn);
                rope_interleaved(k, s.head_dim, c, sn);
                let dims = (s.kv_heads, s.head_dim);
                cache.append_one(li, (k, v), dims, |kb, vb, capacity, len| {
                    attend_one(q, (kb, vb), shape, (capacity, len), y);
                    Ok(())
                })
            })?;
        Ok(Tensor::from_vec(y, (b, 1, qw), &self.device)?)
    }
}

/// Runs `f` on a thread of rayon's pool. A forward pass holds a hundred or more parallel
/// products; started from outside the pool, each would hand its work to the pool and put the
/// caller to sleep until it is done (two thread switches per product). From inside, the
/// calling worker takes part in the work and only the other workers are woken.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::current_thread_index() {
        Some(_) => f(),
        None => rayon::scope(|_| f()),
    }
}

/// cos/sin tables for every position of the context, `[context, head_dim / 2]`.
fn rope_tables(s: &LlamaShape, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = s.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / s.rope_theta.powf(2.0 * i as f32 / s.head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), device)?;
    let pos = Tensor::arange(0u32, s.context as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((s.context, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// Additive mask `[t, pos + t]`: query i (at absolute position pos + i) sees keys ≤ pos + i.
fn causal_mask(t: usize, pos: usize, device: &Device) -> Result<Option<Tensor>> {
    if t == 1 {
        return Ok(None);
    }
    let total = pos + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Some(Tensor::from_vec(mask, (t, total), device)?))
}

/// Log-softmax of a logits row, in f64 for exact option probabilities.
pub fn log_softmax_row(logits: &Tensor) -> Result<Vec<f64>> {
    let v: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(log_softmax(&v))
}

/// Log-softmax in f64.
pub fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = v.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    v.iter().map(|&l| l as f64 - lse).collect()
}

/// Last row of a logits tensor `[n, vocab]` as a vector.
pub fn last_row(logits: &Tensor) -> Result<Vec<f32>> {
    let n = logits.dim(0)?;
    Ok(logits.get(n - 1)?.to_dtype(DType::F32)?.to_vec1()?)
}
