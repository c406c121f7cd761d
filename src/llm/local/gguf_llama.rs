//! A llama-architecture model running on quantized GGUF weights (llama.cpp's file format),
//! with the KV cache held outside the weights so prompt prefixes can be shared.
//!
//! The weights are immutable and shared between threads; each sequence owns a [`KvCache`].
//! Cloning a cache is cheap (tensors are reference counted), which is how the two orders of a
//! comparison, several samples, or several options reuse one computed prefix.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::rotary_emb::rope_i;

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

struct Layer {
    attn_norm: Tensor,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    o: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// Keys and values of the positions processed so far, per layer.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The loaded model.
pub struct GgufLlama {
    pub shape: LlamaShape,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
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
    pub fn load(content: &gguf_file::Content, path: &Path, device: &Device) -> Result<Self> {
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
        let embed_q = tensor("token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let vocab = embed.dim(0)?;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => QMatMul::from_qtensor(tensor("output.weight")?)?,
            false => QMatMul::from_qtensor(embed_q)?,
        };
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let mut layers = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let p = format!("blk.{i}");
            let qm = |t: QTensor| QMatMul::from_qtensor(t);
            layers.push(Layer {
                attn_norm: tensor(&format!("{p}.attn_norm.weight"))?.dequantize(device)?,
                q: qm(tensor(&format!("{p}.attn_q.weight"))?)?,
                k: qm(tensor(&format!("{p}.attn_k.weight"))?)?,
                v: qm(tensor(&format!("{p}.attn_v.weight"))?)?,
                o: qm(tensor(&format!("{p}.attn_output.weight"))?)?,
                ffn_norm: tensor(&format!("{p}.ffn_norm.weight"))?.dequantize(device)?,
                gate: qm(tensor(&format!("{p}.ffn_gate.weight"))?)?,
                up: qm(tensor(&format!("{p}.ffn_up.weight"))?)?,
                down: qm(tensor(&format!("{p}.ffn_down.weight"))?)?,
            });
        }
        let (cos, sin) = rope_tables(&shape, device)?;
        Ok(Self {
            shape: LlamaShape { vocab, ..shape },
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// A cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.shape.layers],
            len: 0,
        }
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
        let t = tokens.len();
        if t == 0 {
            bail!("internal error: forward over zero tokens");
        }
        let pos = cache.len;
        if pos + t > self.shape.context {
            bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                pos + t,
                self.shape.context
            );
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.unsqueeze(0)?; // [1, t, hidden]
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let mask = causal_mask(t, pos, &self.device)?;
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.shape.rms_eps as f32)?;
            let a = self.attention(layer, &h, &cos, &sin, mask.as_ref(), slot)?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.shape.rms_eps as f32)?;
            let g = candle_nn::ops::silu(&layer.gate.forward(&h)?)?;
            let m = layer.down.forward(&(g * layer.up.forward(&h)?)?)?;
            x = (x + m)?;
        }
        cache.len += t;
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
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        slot: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let s = &self.shape;
        let (b, t, _) = x.dims3()?;
        let heads = |m: &QMatMul, n: usize| -> Result<Tensor> {
            Ok(m.forward(x)?
                .reshape((b, t, n, s.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = rope_i(&heads(&layer.q, s.heads)?, cos, sin)?;
        let k = rope_i(&heads(&layer.k, s.kv_heads)?, cos, sin)?;
        let v = heads(&layer.v, s.kv_heads)?;
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        let k = repeat_kv(&k, s.heads / s.kv_heads)?;
        let v = repeat_kv(&v, s.heads / s.kv_heads)?;
        let scale = 1.0 / (s.head_dim as f64).sqrt();
        let mut att = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?; // [b, heads, t, head_dim]
        let y = y.transpose(1, 2)?.reshape((b, t, s.heads * s.head_dim))?;
        Ok(layer.o.forward(&y)?)
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

/// Repeats each key/value head `n` times for grouped-query attention.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, n, s, d))?
        .reshape((b, kv * n, s, d))?)
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

impl KvCache {
    /// Keeps only the first `n` positions (a shared prefix of another sequence).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n >= self.len {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, 0, n)?;
            *v = v.narrow(2, 0, n)?;
        }
        if n == 0 {
            self.layers.iter_mut().for_each(|l| *l = None);
        }
        self.len = n;
        Ok(())
    }
}
