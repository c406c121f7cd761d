//! A decoder-only transformer running on quantized GGUF weights (llama.cpp's file format),
//! with the KV cache held outside the weights so prompt prefixes can be shared.
//!
//! One graph serves every supported architecture; what differs (rotary layout, activation,
//! norms around attention and feed-forward, sliding windows, scales) is read into
//! [`ArchTraits`] by `arch.rs`.
//!
//! The weights are immutable and shared between threads; each sequence owns a [`KvCache`].
//! Cloning a cache is cheap (tensors are reference counted), which is how the two orders of a
//! comparison, several samples, or several options reuse one computed prefix.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{gguf_file, QMatMul, QStorage, QTensor};
use candle_core::{CpuStorage, DType, Device, IndexOp, Module, Storage, Tensor, D};
use candle_nn::rotary_emb::{rope, rope_i};
use rayon::prelude::*;

use super::decode_attention::{attend_one, rope_halves, rope_interleaved, Heads};
use super::fused;
use super::kv_cache::KvCache;
use super::qmatmul::{rows_matmul, RowsMatMul};
use crate::model_files::arch::{ModelShape, RopeParams, RopeStyle};

/// Rows at or above which a projection uses the f32 copy of its weights (a cache-blocked gemm)
/// instead of the quantized dot products, which win only for one or a few rows.
const GEMM_ROWS: usize = 8;

/// A projection kept quantized (streams the least memory: best for one or a few rows) and,
/// when `dense` is on, also as f32 weights (a cache-blocked gemm: best for prompt chunks),
/// unless its quantized kernel is the faster one for prompt chunks too (the packed kernels,
/// on any x86-64 CPU with AVX2).
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
        let rows = match q.device().is_cpu() {
            true => rows_matmul(&q)?,
            false => None,
        };
        // A kernel as fast as the float gemm on prompt chunks needs no f32 copy.
        let dense = match &rows {
            Some(k) if k.fast_for_many_rows() => None,
            _ if dense => Some(q.dequantize(&q.device())?),
            _ => None,
        };
        let quant = match rows {
            Some(k) => Quant::Rows(k),
            None => Quant::Candle(QMatMul::from_qtensor(q)?),
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
                // The activations are read in place (a prompt chunk's are ~1 MiB per product).
                let x = x.contiguous()?;
                let (storage, layout) = x.storage_and_layout();
                let xs = match (&*storage, layout.contiguous_offsets()) {
                    (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => &v[a..b],
                    _ => bail!("internal error: CPU kernels take f32 activations on the CPU"),
                };
                let mut dst = vec![0f32; rows * self.out_features];
                k.matmul(xs, rows, &mut dst);
                drop(storage);
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
    /// One bias per part (Qwen 2's q/k/v), added after the product.
    biases: Option<Vec<Tensor>>,
}

impl Fused {
    /// A matrix whose rows are already the parts stacked (Phi-3's `attn_qkv`, its gate/up
    /// `ffn_up`), `widths` rows each.
    fn stacked(q: QTensor, widths: Vec<usize>, dense: bool) -> Result<Self> {
        let rows = q.shape().dims2()?.0;
        if widths.iter().sum::<usize>() != rows {
            bail!("a fused projection of {rows} rows cannot hold parts of {widths:?} rows");
        }
        Ok(Self {
            linears: vec![Linear::new(q, dense)?],
            widths,
            biases: None,
        })
    }

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
        Ok(Self {
            linears,
            widths,
            biases: None,
        })
    }

    /// One output per part, in the order given to `new`.
    fn forward_with(&self, x: &Tensor, allow_dense: bool) -> Result<Vec<Tensor>> {
        let parts = if self.linears.len() == self.widths.len() {
            self.linears
                .iter()
                .map(|l| l.forward_with(x, allow_dense))
                .collect::<Result<Vec<_>>>()?
        } else {
            let y = self.linears[0].forward_with(x, allow_dense)?;
            let mut start = 0;
            self.widths
                .iter()
                .map(|&w| {
                    let part = y.narrow(D::Minus1, start, w)?;
                    start += w;
                    Ok(part)
                })
                .collect::<Result<Vec<_>>>()?
        };
        match &self.biases {
            None => Ok(parts),
            Some(b) => parts
                .iter()
                .zip(b)
                .map(|(p, b)| Ok(p.broadcast_add(b)?))
                .collect(),
        }
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

/// One transformer block. The optional parts are there when the file holds them.
struct Layer {
    attn_norm: Tensor,
    /// q, k, v.
    qkv: Fused,
    /// RMS norms of each query / key head before the rotation (Qwen 3, Gemma 3).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Linear,
    /// RMS norm of the attention output before the residual add (Gemma).
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    /// gate, up.
    gate_up: Fused,
    down: Linear,
    /// RMS norm of the feed-forward output before the residual add (Gemma).
    post_ffn_norm: Option<Tensor>,
    /// Index of this layer's rotary tables in [`GgufModel::ropes`].
    rope: usize,
    /// Keys this layer sees (sliding window), if it is local.
    window: Option<usize>,
}

/// cos/sin of every position for one set of rotary frequencies, `[context, head_dim / 2]`,
/// and on the CPU the same values as plain slices for the decoding fast path.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    host: Option<(Vec<f32>, Vec<f32>)>,
}

/// The loaded model.
pub struct GgufModel {
    pub shape: ModelShape,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    ropes: Vec<Rope>,
    device: Device,
}

/// A source of GGUF-named tensors: `Ok(None)` for a tensor the model does not have.
pub(super) type TensorSource<'a> = dyn FnMut(&str) -> Result<Option<QTensor>> + 'a;

fn need(tensor: &mut TensorSource<'_>, name: &str) -> Result<QTensor> {
    tensor(name)?.ok_or_else(|| anyhow!("missing tensor `{name}`"))
}

/// `q` (tensor `name`) if its shape is `want` (rows first), the shape the metadata implies:
/// a tensor of any other shape would be read past its end or multiplied as garbage.
fn shaped(q: QTensor, name: &str, want: &[usize]) -> Result<QTensor> {
    if q.shape().dims() != want {
        bail!(
            "tensor `{name}` has shape {:?}, the model's metadata needs {want:?}",
            q.shape().dims()
        );
    }
    Ok(q)
}

/// [`need`] with the shape checked.
fn need_shaped(tensor: &mut TensorSource<'_>, name: &str, want: &[usize]) -> Result<QTensor> {
    shaped(need(tensor, name)?, name, want)
}

/// An optional tensor with the shape checked.
fn get_shaped(
    tensor: &mut TensorSource<'_>,
    name: &str,
    want: &[usize],
) -> Result<Option<QTensor>> {
    tensor(name)?.map(|q| shaped(q, name, want)).transpose()
}

impl GgufModel {
    /// Loads the weights of a GGUF file already opened as `content`.
    /// `dense` also keeps f32 copies of the weights for multi-row products (≈4 bytes per
    /// parameter more memory, several times faster prompt processing on CPU).
    pub fn load(
        content: &gguf_file::Content,
        path: &Path,
        device: &Device,
        dense: bool,
    ) -> Result<Self> {
        let shape = ModelShape::read(content, path)?;
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut tensor = |name: &str| -> Result<Option<QTensor>> {
            if !content.tensor_infos.contains_key(name) {
                return Ok(None);
            }
            content
                .tensor(&mut file, name, device)
                .map(Some)
                .with_context(|| format!("{}: cannot read tensor `{name}`", path.display()))
        };
        let tied = !content.tensor_infos.contains_key("output.weight");
        Self::from_tensors(shape, tied, &mut tensor, device, dense)
            .with_context(|| format!("{}: cannot build the model", path.display()))
    }

    /// Builds the model from tensors in GGUF naming (`token_embd.weight`, `blk.N.attn_q.weight`,
    /// ...; for llama, q/k rows in llama.cpp's interleaved rotary order) handed out by `tensor`.
    /// `tied`: the output projection reuses the token embeddings (no `output.weight`).
    pub(super) fn from_tensors(
        shape: ModelShape,
        tied: bool,
        tensor: &mut TensorSource<'_>,
        device: &Device,
        dense: bool,
    ) -> Result<Self> {
        let hidden = shape.hidden;
        let embed_q = need(tensor, "token_embd.weight")?;
        let vocab = match embed_q.shape().dims() {
            &[vocab, width] if vocab > 0 && width == hidden => vocab,
            dims => bail!(
                "tensor `token_embd.weight` has shape {dims:?}, the model's metadata needs \
                 [vocabulary, {hidden}]"
            ),
        };
        let embed = embed_q.dequantize(device)?;
        let output = match tied {
            false => Linear::new(
                need_shaped(tensor, "output.weight", &[vocab, hidden])?,
                dense,
            )?,
            true => Linear::new(embed_q, dense)?,
        };
        let norm = need_shaped(tensor, "output_norm.weight", &[hidden])?.dequantize(device)?;
        let a = &shape.arch;
        let (q_rows, kv_rows) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let mut layers = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let p = format!("blk.{i}");
            let get = |t: &mut TensorSource<'_>, name: &str, want: &[usize]| {
                get_shaped(t, &format!("{p}.{name}.weight"), want)
            };
            let w = |t: &mut TensorSource<'_>, name: &str, want: &[usize]| {
                need_shaped(t, &format!("{p}.{name}.weight"), want)
            };
            let vector =
                |t: &mut TensorSource<'_>, name: &str, n: usize| -> Result<Option<Tensor>> {
                    Ok(get(t, name, &[n])?
                        .map(|q| q.dequantize(device))
                        .transpose()?)
                };
            let q_norm = vector(tensor, "attn_q_norm", shape.head_dim)?;
            let k_norm = vector(tensor, "attn_k_norm", shape.head_dim)?;
            let post_attn_norm = vector(tensor, "post_attention_norm", hidden)?;
            let post_ffn_norm = vector(tensor, "post_ffw_norm", hidden)?;
            let attn_norm = w(tensor, "attn_norm", &[hidden])?.dequantize(device)?;
            let ffn_norm = w(tensor, "ffn_norm", &[hidden])?.dequantize(device)?;
            let qkv_rows = q_rows + 2 * kv_rows;
            let mut qkv = match get(tensor, "attn_qkv", &[qkv_rows, hidden])? {
                Some(fused) => Fused::stacked(fused, vec![q_rows, kv_rows, kv_rows], dense)?,
                None => {
                    let parts = vec![
                        w(tensor, "attn_q", &[q_rows, hidden])?,
                        w(tensor, "attn_k", &[kv_rows, hidden])?,
                        w(tensor, "attn_v", &[kv_rows, hidden])?,
                    ];
                    Fused::new(parts, dense)?
                }
            };
            let mut biases = Vec::with_capacity(3);
            for (n, rows) in [("attn_q", q_rows), ("attn_k", kv_rows), ("attn_v", kv_rows)] {
                biases.push((get_shaped(tensor, &format!("{p}.{n}.bias"), &[rows])?, rows));
            }
            if biases.iter().any(|(b, _)| b.is_some()) {
                let b = biases
                    .into_iter()
                    .map(|(b, rows)| match b {
                        Some(b) => Ok(b.dequantize(device)?),
                        None => Ok(Tensor::zeros(rows, DType::F32, device)?),
                    })
                    .collect::<Result<Vec<_>>>()?;
                qkv.biases = Some(b);
            }
            // The feed-forward width is the gate's rows (Phi-3: half of `ffn_up`'s), checked
            // against the metadata's `feed_forward_length` where the file has one.
            let (gate_name, up_name) =
                (format!("{p}.ffn_gate.weight"), format!("{p}.ffn_up.weight"));
            let gate = tensor(&gate_name)?;
            let up = need(tensor, &up_name)?;
            let fused_ff = gate.is_none();
            let (ff_source, ff_tensor) = match &gate {
                Some(g) => (&gate_name, g),
                None => (&up_name, &up),
            };
            let (ff_rows, ff_width) = match ff_tensor.shape().dims() {
                &[rows, width] => (rows, width),
                _ => (0, 0),
            };
            let ff = if fused_ff { ff_rows / 2 } else { ff_rows };
            if ff == 0 || ff_width != hidden || (fused_ff && ff_rows % 2 != 0) {
                bail!(
                    "tensor `{ff_source}` has shape [{ff_rows}, {ff_width}], the model's \
                     metadata needs [feed-forward width, {hidden}]"
                );
            }
            if let Some(want) = shape.ff.filter(|&want| want != ff) {
                bail!("tensor `{ff_source}` has {ff} feed-forward rows, the metadata says {want}");
            }
            let gate_up = match gate {
                Some(gate) => Fused::new(
                    vec![
                        shaped(gate, &gate_name, &[ff, hidden])?,
                        shaped(up, &up_name, &[ff, hidden])?,
                    ],
                    dense,
                )?,
                // Phi-3: `ffn_up` holds the gate's rows, then the up rows.
                None => Fused::stacked(
                    shaped(up, &up_name, &[2 * ff, hidden])?,
                    vec![ff, ff],
                    dense,
                )?,
            };
            layers.push(Layer {
                attn_norm,
                qkv,
                q_norm,
                k_norm,
                o: Linear::new(w(tensor, "attn_output", &[hidden, q_rows])?, dense)?,
                post_attn_norm,
                ffn_norm,
                gate_up,
                down: Linear::new(w(tensor, "ffn_down", &[hidden, ff])?, dense)?,
                post_ffn_norm,
                rope: usize::from(a.local_layers[i]),
                window: a.window_of(i),
            });
        }
        // Llama 3's rope scaling: per-frequency divisors.
        let factors: Option<Vec<f32>> =
            match get_shaped(tensor, "rope_freqs.weight", &[shape.head_dim / 2])? {
                Some(q) => Some(q.dequantize(device)?.flatten_all()?.to_vec1()?),
                None => None,
            };
        // Index 0 for global layers; index 1 only when the model has local ones (a table costs
        // context × head_dim floats, four times over).
        let kinds = match a.local_layers.contains(&true) {
            true => vec![&a.rope, &a.rope_local],
            false => vec![&a.rope],
        };
        let ropes = kinds
            .into_iter()
            .map(|params| Rope::new(&shape, params, factors.as_deref(), device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shape: ModelShape { vocab, ..shape },
            embed,
            layers,
            norm,
            output,
            ropes,
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
        if tokens.len() == 1 && self.device.is_cpu() {
            // One token: the decoding path (same numbers as `decode_batch`).
            return self.decode_batch(tokens, &mut [cache]);
        }
        on_pool(|| self.forward_on_pool(tokens, cache, all_positions))
    }

    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        fused::rms_norm(x, w, self.shape.rms_eps as f32)
    }

    /// Token embeddings of `ids`, scaled where the architecture says so: `[n, hidden]`.
    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?;
        let x = self.embed.index_select(&ids, 0)?;
        match self.shape.arch.embed_scale {
            Some(s) => Ok((x * s as f64)?),
            None => Ok(x),
        }
    }

    /// The block after its attention output `a`: post-norm (Gemma), residual add, the
    /// feed-forward (pre- and post-norm) and its residual add. The residual stream `x` is
    /// updated in its own buffer: it must not share it with a tensor still in use.
    fn block_tail(&self, layer: &Layer, x: Tensor, a: Tensor, allow_dense: bool) -> Result<Tensor> {
        let eps = self.shape.rms_eps as f32;
        let x = fused::residual_add(x, &a, layer.post_attn_norm.as_ref().map(|w| (w, eps)))?;
        let h = self.rms(&x, &layer.ffn_norm)?;
        let gu = layer.gate_up.forward_with(&h, allow_dense)?;
        let g = fused::gated(&gu[0], &gu[1], self.shape.arch.activation)?;
        let m = layer.down.forward_with(&g, allow_dense)?;
        fused::residual_add(x, &m, layer.post_ffn_norm.as_ref().map(|w| (w, eps)))
    }

    /// Final norm, output projection and soft-capping of hidden states `[b, t, hidden]`.
    fn logits(&self, x: &Tensor, allow_dense: bool) -> Result<Tensor> {
        let x = self.rms(&x.contiguous()?, &self.norm)?;
        let y = self.output.forward_with(&x, allow_dense)?;
        match self.shape.arch.final_softcap {
            Some(c) => Ok(((y / c as f64)?.tanh()? * c as f64)?),
            None => Ok(y),
        }
    }

    /// Per-head RMS norms of queries and keys (`[.., heads · head_dim]`), where the layer has
    /// them.
    fn qk_norms(&self, layer: &Layer, q: Tensor, k: Tensor) -> Result<(Tensor, Tensor)> {
        let d = self.shape.head_dim;
        let norm = |x: Tensor, w: &Option<Tensor>| -> Result<Tensor> {
            let Some(w) = w else { return Ok(x) };
            let dims = x.dims().to_vec();
            let n = dims[dims.len() - 1] / d;
            let mut split = dims.clone();
            *split.last_mut().expect("rank >= 1") = n;
            split.push(d);
            Ok(self
                .rms(&x.contiguous()?.reshape(split)?, w)?
                .reshape(dims)?)
        };
        Ok((norm(q, &layer.q_norm)?, norm(k, &layer.k_norm)?))
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
        let mut x = self.embed(tokens)?.unsqueeze(0)?; // [1, t, hidden]

        // Mask tensors off the CPU only: there the softmax leaves the masked keys out itself.
        let mask = |window| match self.device.is_cpu() {
            true => Ok(None),
            false => causal_mask(t, pos, window, &self.device),
        };
        let global = mask(None)?;
        let local = match self.shape.arch.sliding_window {
            Some(w) => mask(Some(w))?,
            None => None,
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let h = self.rms(&x, &layer.attn_norm)?;
            let qkv = layer.qkv.forward_with(&h, true)?;
            let mask = match layer.window {
                Some(_) => local.as_ref(),
                None => global.as_ref(),
            };
            let y = self.attend(layer, &qkv, mask, cache, li)?;
            x = self.block_tail(layer, x, layer.o.forward(&y)?, true)?;
        }
        cache.advance(t);
        let x = if all_positions {
            x
        } else {
            x.i((.., t - 1..t, ..))?
        };
        Ok(self.logits(&x, true)?.squeeze(0)?)
    }

    /// Attention of one sequence's new positions `[1, t, ·]` over its cache plus themselves;
    /// `mask` is the additive causal mask off the CPU (on it, the layer's window is applied).
    fn attend(
        &self,
        layer: &Layer,
        qkv: &[Tensor],
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        li: usize,
    ) -> Result<Tensor> {
        let s = &self.shape;
        let pos = cache.len();
        let (b, t, _) = qkv[0].dims3()?;
        let (q, k) = self.qk_norms(layer, qkv[0].clone(), qkv[1].clone())?;
        let heads = |x: &Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, n, s.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let r = &self.ropes[layer.rope];
        let cos = r.cos.narrow(0, pos, t)?;
        let sin = r.sin.narrow(0, pos, t)?;
        let rotate = |x: &Tensor| -> Result<Tensor> {
            Ok(match s.arch.rope_style {
                RopeStyle::Interleaved => rope_i(x, &cos, &sin)?,
                RopeStyle::Neox => rope(x, &cos, &sin)?,
            })
        };
        let q = rotate(&heads(&q, s.heads)?)?;
        let k = rotate(&heads(&k, s.kv_heads)?)?;
        let v = heads(&qkv[2], s.kv_heads)?;
        let (k, v) = cache.append(li, &k, &v)?;
        // Grouped-query attention without copying keys and values per query head: the `n`
        // query heads sharing a key/value head become `n * t` query rows of that head.
        let n = s.heads / s.kv_heads;
        let q = q.reshape((b, s.kv_heads, n * t, s.head_dim))?;
        let att = q.matmul(&k.t()?)?; // [b, kv, n * t, keys]
        let att = match self.device.is_cpu() {
            true => {
                let window = layer.window;
                fused::causal_softmax(&att, self.attn_scale(), fused::Causal { pos, t, window })?;
                att
            }
            false => self.masked_softmax(att, mask)?,
        };
        let y = att.matmul(&v)?; // [b, kv, n * t, head_dim]
        let y = y.reshape((b, s.heads, t, s.head_dim))?;
        Ok(y.transpose(1, 2)?.reshape((b, t, s.heads * s.head_dim))?)
    }

    /// `softmax(scores · scale + mask)` over the keys, with candle's ops (scores
    /// `[b, kv, n · t, keys]`, mask `[t, keys]`).
    fn masked_softmax(&self, att: Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut att = (att * self.attn_scale() as f64)?;
        if let Some(mask) = mask {
            let n = self.shape.heads / self.shape.kv_heads;
            let (t, keys) = mask.dims2()?;
            let mask = mask
                .unsqueeze(0)?
                .expand((n, t, keys))?
                .reshape((n * t, keys))?;
            att = att.broadcast_add(&mask)?;
        }
        Ok(candle_nn::ops::softmax_last_dim(&att)?)
    }

    fn attn_scale(&self) -> f32 {
        let s = &self.shape;
        s.arch
            .attn_scale
            .unwrap_or(1.0 / (s.head_dim as f32).sqrt())
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
        let mut x = self.embed(tokens)?.unsqueeze(1)?; // [b, 1, hidden]
        for (li, layer) in self.layers.iter().enumerate() {
            let h = self.rms(&x, &layer.attn_norm)?;
            let qkv = layer.qkv.forward_with(&h, false)?;
            let y = match self.device.is_cpu() {
                true => self.attend_decode_cpu(layer, qkv, caches, li)?,
                false => {
                    let mut ys = Vec::with_capacity(b);
                    for (j, cache) in caches.iter_mut().enumerate() {
                        let one = qkv
                            .iter()
                            .map(|p| p.narrow(0, j, 1))
                            .collect::<candle_core::Result<Vec<_>>>()?;
                        let mask = causal_mask(1, cache.len(), layer.window, &self.device)?;
                        ys.push(self.attend(layer, &one, mask.as_ref(), cache, li)?);
                    }
                    Tensor::cat(&ys, 0)?
                }
            };
            x = self.block_tail(layer, x, layer.o.forward_quant(&y)?, false)?;
        }
        for c in caches.iter_mut() {
            c.advance(1);
        }
        Ok(self.logits(&x, false)?.squeeze(1)?)
    }
}

impl GgufModel {
    /// CPU decoding attention: each sequence's new position over its cache, on plain slices
    /// (see `decode_attention`), sequences in parallel. `qkv`: `[b, 1, ·]` projections.
    fn attend_decode_cpu(
        &self,
        layer: &Layer,
        qkv: Vec<Tensor>,
        caches: &mut [&mut KvCache],
        li: usize,
    ) -> Result<Tensor> {
        let s = &self.shape;
        let shape = Heads {
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
            scale: self.attn_scale(),
        };
        let mut qkv = qkv.into_iter();
        let (q, k, v) = match (qkv.next(), qkv.next(), qkv.next()) {
            (Some(q), Some(k), Some(v)) => (q, k, v),
            _ => bail!("internal error: attention needs q, k and v"),
        };
        let (q, k) = self.qk_norms(layer, q, k)?;
        let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let (mut q, mut k, v) = (values(&q)?, values(&k)?, values(&v)?);
        let (qw, kw, half) = (
            s.heads * s.head_dim,
            s.kv_heads * s.head_dim,
            s.head_dim / 2,
        );
        let Some((cos, sin)) = &self.ropes[layer.rope].host else {
            bail!("internal error: CPU decoding without host rotary tables");
        };
        let rotate = match s.arch.rope_style {
            RopeStyle::Interleaved => rope_interleaved,
            RopeStyle::Neox => rope_halves,
        };
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
                rotate(q, s.head_dim, c, sn);
                rotate(k, s.head_dim, c, sn);
                let dims = (s.kv_heads, s.head_dim);
                cache.append_one(li, (k, v), dims, |kb, vb, capacity, len| {
                    let first = layer.window.map_or(0, |w| len.saturating_sub(w));
                    attend_one(q, (kb, vb), shape, (capacity, first, len), y);
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

impl Rope {
    /// Tables for `params`, with per-frequency divisors `factors` (Llama 3) if given.
    fn new(
        s: &ModelShape,
        params: &RopeParams,
        factors: Option<&[f32]>,
        device: &Device,
    ) -> Result<Self> {
        let half = s.head_dim / 2;
        if let Some(f) = factors.filter(|f| f.len() != half) {
            bail!(
                "rope_freqs holds {} factors for {half} rotary frequencies",
                f.len()
            );
        }
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / params.theta.powf(2.0 * i as f32 / s.head_dim as f32);
                f * params.freq_scale / factors.map_or(1.0, |fs| fs[i])
            })
            .collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::arange(0u32, s.context as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((s.context, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let (cos, sin) = (freqs.cos()?, freqs.sin()?);
        let host = match device.is_cpu() {
            true => Some((cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?)),
            false => None,
        };
        Ok(Self { cos, sin, host })
    }
}

/// Additive mask `[t, pos + t]`: query i (at absolute position pos + i) sees keys ≤ pos + i,
/// and with a sliding window only the last `window` of them. `None` when nothing is masked.
fn causal_mask(
    t: usize,
    pos: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = pos + t;
    if t == 1 && window.is_none_or(|w| total <= w) {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                let q = pos + i;
                let outside = j > q || window.is_some_and(|w| q - j >= w);
                if outside {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
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
