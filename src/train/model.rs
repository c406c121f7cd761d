//! A trainable decoder-only causal language model of every supported family.
//!
//! [`Llama`] follows Hugging Face's `LlamaForCausalLM`: token embeddings, pre-norm
//! decoder blocks (RMSNorm, grouped-query attention with non-interleaved rotary
//! embeddings, gated MLP), a final RMSNorm and the output projection (tied to the
//! embeddings or `lm_head`), with what the other families add where their config says so
//! (see [`LlamaConfig::traits`] and the methods beside it): q/k/v biases (Qwen 2), q/k norms
//! (Qwen 3, Gemma 3), Gemma's norms around attention and MLP with their `1 + w` scale, scaled
//! embeddings and GELU, local layers with a sliding window and their own rope base, final
//! logit soft-capping, Phi-3's fused projections, linear and Llama 3 rope scaling. Weights use
//! the family's Hugging Face tensor names.
//!
//! The training path, [`CausalLm::forward`], keeps no state; generation goes through
//! [`CausalLm::forward_cached`] with an explicit [`GenerationCache`].

use super::attention::causal_attention;
use super::lm_head::LmHead;
use super::lora::LoraLinear;
use super::ops;
use super::recompute::{checkpointed, BlockFn, RecomputedGrads};
use crate::model_files::arch::{Activation, RopeParams};
use crate::model_files::config::LlamaConfig;
use crate::model_files::lora::{LinearKind, LoraConfig};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use std::sync::Arc;

/// A causal language model that can be trained and sampled from.
pub trait CausalLm {
    /// Size of the vocabulary (last dimension of the logits).
    fn vocab_size(&self) -> usize;

    /// Width of the hidden states returned by [`CausalLm::forward_hidden`].
    fn hidden_size(&self) -> usize;

    /// Number of decoder blocks (entries of a [`GenerationCache`]).
    fn num_layers(&self) -> usize;

    /// Final normed hidden states `[b, t, hidden]` for `input_ids: [b, t]` (u32).
    ///
    /// `attention_mask` (`[b, t]`, 1 = real token, 0 = padding) hides padded keys.
    /// Positions count from 0 in every row, so pad on the right.
    fn forward_hidden(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>)
        -> Result<Tensor>;

    /// Applies the output projection to hidden states `[.., hidden]`.
    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor>;

    /// `log p(targets[i] | rows[i])` as `[n]` (f32 or wider), for final hidden states `rows: [n, hidden]`
    /// (from [`CausalLm::forward_hidden`]) and `targets: [n]` (u32), with the logits divided
    /// by `temperature` (0 or 1: unchanged). Differentiable; take gradients with
    /// [`CausalLm::backward`].
    fn target_logprobs(&self, rows: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
        let mut logits = super::lm_head::upcast(&self.logits_from_hidden(rows)?)?;
        if temperature > 0.0 && temperature != 1.0 {
            logits = (logits / temperature)?;
        }
        ops::log_softmax_last_dim(&logits)?
            .gather(&targets.unsqueeze(1)?, 1)?
            .squeeze(1)
    }

    /// Entropies `[n]` (f32 or wider, no gradient) of the next-token distributions at `rows:
    /// [n, hidden]`, at `temperature`.
    fn entropies(&self, rows: &Tensor, temperature: f64) -> Result<Tensor> {
        let mut logits = super::lm_head::upcast(&self.logits_from_hidden(&rows.detach())?)?;
        if temperature > 0.0 && temperature != 1.0 {
            logits = (logits / temperature)?;
        }
        let log_probs = ops::log_softmax_last_dim(&logits)?.detach();
        (log_probs.exp()? * &log_probs)?.sum(D::Minus1)?.neg()
    }

    /// Logits `[b, t, vocab]` at every position.
    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.logits_from_hidden(&self.forward_hidden(input_ids, attention_mask)?)
    }

    /// Runs the new `tokens: [b, t]` after those already in `cache`, extends the cache,
    /// and returns the logits `[b, t, vocab]` of the new positions.
    ///
    /// All rows share the same positions and there is no padding mask, so a batch must
    /// hold prompts of equal length.
    fn forward_cached(&self, tokens: &Tensor, cache: &mut GenerationCache) -> Result<Tensor>;

    /// An empty cache for this model.
    fn new_cache(&self) -> GenerationCache {
        GenerationCache::new(self.num_layers())
    }

    /// Gradients of `loss` with respect to every variable it depends on. Use this rather
    /// than `loss.backward()`: with activation checkpointing, the blocks' parameters receive
    /// their gradients here.
    fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        loss.backward()
    }
}

/// Keys and values of the positions seen so far, per layer, for generation.
#[derive(Debug, Clone)]
pub struct GenerationCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl GenerationCache {
    /// An empty cache for `num_layers` blocks.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }
}

/// An RMS norm; Gemma scales by `1 + weight` (`offset` 1), the others by `weight`.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    offset: f64,
    eps: f64,
}

impl RmsNorm {
    fn load(vb: &VarBuilder, cfg: &LlamaConfig, size: usize, name: &str) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, name)?,
            offset: cfg.norm_offset(),
            eps: cfg.rms_norm_eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self.offset {
            0.0 => ops::rms_norm(xs, &self.weight, self.eps),
            offset => ops::rms_norm(xs, &(&self.weight + offset)?, self.eps),
        }
    }
}

/// The q, k and v projections: three layers, or one fused layer (Phi-3).
#[derive(Debug, Clone)]
enum QkvProj {
    Separate([LoraLinear; 3]),
    Fused(LoraLinear),
}

#[derive(Debug, Clone)]
struct Attention {
    qkv: QkvProj,
    /// q, k and v biases (Qwen 2).
    biases: Option<[Tensor; 3]>,
    /// Per-head RMS norms of queries and keys before the rotation (Qwen 3, Gemma 3).
    qk_norms: Option<[RmsNorm; 2]>,
    o_proj: LoraLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Multiplies the query-key products.
    scale: f64,
}

/// The gate and up projections: two layers, or one fused layer (Phi-3: gate rows first).
#[derive(Debug, Clone)]
enum GateUpProj {
    Separate([LoraLinear; 2]),
    Fused(LoraLinear),
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_up: GateUpProj,
    down_proj: LoraLinear,
    activation: Activation,
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    attn: Attention,
    /// Norm of the attention output before the residual add (Gemma).
    post_attention_norm: Option<RmsNorm>,
    /// Norm before the MLP (`post_attention_layernorm` in llama naming,
    /// `pre_feedforward_layernorm` in Gemma's).
    pre_mlp_norm: RmsNorm,
    mlp: Mlp,
    /// Norm of the MLP output before the residual add (Gemma).
    post_mlp_norm: Option<RmsNorm>,
    /// Whether the layer is local: sliding-window mask and the local rotary tables.
    local: bool,
}

fn load_linear(
    vb: &VarBuilder,
    cfg: &LlamaConfig,
    layer: usize,
    kind: LinearKind,
    lora: Option<&LoraConfig>,
) -> Result<LoraLinear> {
    let (in_dim, out_dim) = kind.dims(cfg);
    let lora = lora.filter(|l| l.adapts(kind));
    LoraLinear::load(vb.pp(kind.module_path(layer)), in_dim, out_dim, lora)
}

/// cos/sin tables `[positions, head_dim / 2]` of one set of rotary frequencies.
#[derive(Debug, Clone)]
struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl Attention {
    /// `xs: [b, t, hidden]` at absolute positions `offset..offset + t`; `rope` holds the
    /// rotary tables of those positions; `mask` is additive `[b|1, 1, t, t_k]`.
    fn forward(
        &self,
        xs: &Tensor,
        rope: &RopeTables,
        mask: &Tensor,
        cache: Option<(&mut GenerationCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let (mut q, mut k, mut v) = match &self.qkv {
            QkvProj::Separate([q, k, v]) => (q.forward(xs)?, k.forward(xs)?, v.forward(xs)?),
            QkvProj::Fused(qkv) => {
                let qkv = qkv.forward(xs)?;
                (
                    qkv.narrow(D::Minus1, 0, h * d)?,
                    qkv.narrow(D::Minus1, h * d, kvh * d)?,
                    qkv.narrow(D::Minus1, (h + kvh) * d, kvh * d)?,
                )
            }
        };
        if let Some([bq, bk, bv]) = &self.biases {
            q = q.broadcast_add(&bq.to_dtype(q.dtype())?)?;
            k = k.broadcast_add(&bk.to_dtype(k.dtype())?)?;
            v = v.broadcast_add(&bv.to_dtype(v.dtype())?)?;
        }
        let split = |x: Tensor, n: usize| x.reshape((b, t, n, d))?.transpose(1, 2);
        let (mut q, mut k) = (split(q, h)?, split(k, kvh)?);
        if let Some([q_norm, k_norm]) = &self.qk_norms {
            q = q_norm.forward(&q)?;
            k = k_norm.forward(&k)?;
        }
        let q = ops::rope(&q, &rope.cos, &rope.sin)?;
        let mut k = ops::rope(&k, &rope.cos, &rope.sin)?;
        let mut v = split(v, kvh)?.contiguous()?;
        if let Some((cache, layer)) = cache {
            (k, v) = cache.append(layer, &k, &v)?;
        }
        let out = causal_attention(&q, &k, &v, mask, self.scale)?
            .transpose(1, 2)?
            .reshape((b, t, h * d))?;
        self.o_proj.forward(&out)
    }
}

impl Block {
    /// The block's projections.
    fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        let mut all: Vec<&mut LoraLinear> = match &mut self.attn.qkv {
            QkvProj::Separate(qkv) => qkv.iter_mut().collect(),
            QkvProj::Fused(qkv) => vec![qkv],
        };
        all.push(&mut self.attn.o_proj);
        match &mut self.mlp.gate_up {
            GateUpProj::Separate(gate_up) => all.extend(gate_up.iter_mut()),
            GateUpProj::Fused(gate_up) => all.push(gate_up),
        }
        all.push(&mut self.mlp.down_proj);
        all
    }

    fn forward(
        &self,
        xs: &Tensor,
        rope: &RopeTables,
        mask: &Tensor,
        cache: Option<(&mut GenerationCache, usize)>,
    ) -> Result<Tensor> {
        let normed = self.input_layernorm.forward(xs)?;
        let mut attn = self.attn.forward(&normed, rope, mask, cache)?;
        if let Some(norm) = &self.post_attention_norm {
            attn = norm.forward(&attn)?;
        }
        let xs = (xs + attn)?;
        let normed = self.pre_mlp_norm.forward(&xs)?;
        let mut mlp = self.mlp.forward(&normed)?;
        if let Some(norm) = &self.post_mlp_norm {
            mlp = norm.forward(&mlp)?;
        }
        xs + mlp
    }
}

impl Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUpProj::Separate([gate, up]) => (gate.forward(xs)?, up.forward(xs)?),
            GateUpProj::Fused(gate_up) => {
                let both = gate_up.forward(xs)?;
                let i = both.dim(D::Minus1)? / 2;
                (both.narrow(D::Minus1, 0, i)?, both.narrow(D::Minus1, i, i)?)
            }
        };
        let gate = match self.activation {
            Activation::Silu => gate.silu()?,
            // candle's `gelu` is the tanh approximation.
            Activation::GeluTanh => gate.gelu()?,
        };
        self.down_proj.forward(&(gate * up)?)
    }
}

/// A decoder-only causal LM of any supported family (see the module docs).
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    /// Embeddings are multiplied by this (Gemma: √hidden).
    embed_scale: Option<f64>,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: LmHead,
    /// Keys a local layer sees.
    sliding_window: Option<usize>,
    rope: RopeTables,
    /// The local layers' tables, when the model has local layers.
    rope_local: Option<RopeTables>,
    /// The dtype of the hidden states and the blocks' products (see
    /// [`Llama::with_compute_dtype`]).
    compute: DType,
    /// Whether the uncached forward pass recomputes the blocks in backward (see
    /// [`Llama::with_checkpointing`]).
    checkpoint_blocks: bool,
    /// Where recomputed blocks and loss slices leave their parameters' gradients.
    recompute: RecomputedGrads,
}

impl Llama {
    /// Builds the model from weights with Hugging Face names in `vb` (its dtype is the
    /// compute dtype).
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, vb, None)
    }

    /// Like [`Llama::new`], with LoRA adapters (`<module>.lora_A.weight` and
    /// `<module>.lora_B.weight`) on the layers `lora` targets.
    pub fn new_with_lora(cfg: &LlamaConfig, vb: VarBuilder, lora: &LoraConfig) -> Result<Self> {
        Self::load(cfg, vb, Some(lora))
    }

    fn load(cfg: &LlamaConfig, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        let invalid = |e: anyhow::Error| candle_core::Error::Msg(format!("{e:#}"));
        cfg.validate().map_err(invalid)?;
        if let Some(lora) = lora {
            lora.target_kinds(cfg).map_err(invalid)?;
        }
        let traits = cfg.traits().map_err(invalid)?;
        let (h, v, d) = (cfg.hidden_size, cfg.vocab_size, cfg.head_size());
        let embed_tokens = vb.get((v, h), "model.embed_tokens.weight")?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let lin = |kind| load_linear(&vb, cfg, l, kind, lora);
            let prefix = format!("model.layers.{l}");
            let norm =
                |name: &str, size| RmsNorm::load(&vb, cfg, size, &format!("{prefix}.{name}"));
            let qkv = match cfg.has_fused_projections() {
                true => QkvProj::Fused(lin(LinearKind::QkvProj)?),
                false => QkvProj::Separate([
                    lin(LinearKind::QProj)?,
                    lin(LinearKind::KProj)?,
                    lin(LinearKind::VProj)?,
                ]),
            };
            let gate_up = match cfg.has_fused_projections() {
                true => GateUpProj::Fused(lin(LinearKind::GateUpProj)?),
                false => {
                    GateUpProj::Separate([lin(LinearKind::GateProj)?, lin(LinearKind::UpProj)?])
                }
            };
            let biases = match cfg.has_qkv_bias() {
                true => {
                    let bias = |kind: LinearKind| {
                        vb.get(kind.dims(cfg).1, &format!("{}.bias", kind.module_path(l)))
                    };
                    Some([
                        bias(LinearKind::QProj)?,
                        bias(LinearKind::KProj)?,
                        bias(LinearKind::VProj)?,
                    ])
                }
                false => None,
            };
            let qk_norms = match cfg.has_qk_norm() {
                true => Some([
                    norm("self_attn.q_norm.weight", d)?,
                    norm("self_attn.k_norm.weight", d)?,
                ]),
                false => None,
            };
            let sandwich = cfg.has_sandwich_norms();
            let (post_attention_norm, pre_mlp_norm, post_mlp_norm) = match sandwich {
                true => (
                    Some(norm("post_attention_layernorm.weight", h)?),
                    norm("pre_feedforward_layernorm.weight", h)?,
                    Some(norm("post_feedforward_layernorm.weight", h)?),
                ),
                false => (None, norm("post_attention_layernorm.weight", h)?, None),
            };
            blocks.push(Block {
                input_layernorm: norm("input_layernorm.weight", h)?,
                attn: Attention {
                    qkv,
                    biases,
                    qk_norms,
                    o_proj: lin(LinearKind::OProj)?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.kv_heads(),
                    head_dim: d,
                    scale: traits.attn_scale.map_or(1.0 / (d as f64).sqrt(), f64::from),
                },
                post_attention_norm,
                pre_mlp_norm,
                mlp: Mlp {
                    gate_up,
                    down_proj: lin(LinearKind::DownProj)?,
                    activation: traits.activation,
                },
                post_mlp_norm,
                local: traits.local_layers[l],
            });
        }
        let norm = RmsNorm::load(&vb, cfg, h, "model.norm.weight")?;
        let lm_head = LmHead::new(
            LoraLinear::from_weight(match cfg.tie_word_embeddings {
                true => embed_tokens.clone(),
                false => vb.get((v, h), "lm_head.weight")?,
            }),
            traits.final_softcap.map(f64::from),
        );
        let divisors = cfg.rope_divisors().map_err(invalid)?;
        let tables = |p: &RopeParams| -> Result<RopeTables> {
            let (cos, sin) = ops::rope_tables(
                d,
                cfg.max_position_embeddings,
                (f64::from(p.theta), f64::from(p.freq_scale)),
                divisors.as_deref(),
                vb.dtype(),
                vb.device(),
            )?;
            Ok(RopeTables { cos, sin })
        };
        let rope_local = match traits.local_layers.contains(&true) {
            true => Some(tables(&traits.rope_local)?),
            false => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            embed_scale: traits.embed_scale.map(f64::from),
            blocks,
            norm,
            lm_head,
            sliding_window: traits.sliding_window,
            rope: tables(&traits.rope)?,
            rope_local,
            compute: vb.dtype(),
            checkpoint_blocks: false,
            recompute: RecomputedGrads::default(),
        })
    }

    /// The same model with activation checkpointing in its uncached forward passes: each
    /// block keeps only its input for backward and recomputes its activations there (see
    /// [`super::recompute`]). Gradients must then be taken with [`CausalLm::backward`].
    pub fn with_checkpointing(mut self) -> Self {
        self.checkpoint_blocks = true;
        self
    }

    /// The same model computing the losses' log-probabilities `rows` positions at a time
    /// (see [`super::lm_head`]; by default a slice holds about 8 Mi logits).
    pub fn with_loss_slice_rows(mut self, rows: usize) -> Self {
        self.lm_head = self.lm_head.with_slice_rows(rows);
        self
    }

    /// The same model computing in `dtype` (bf16 for mixed precision; see
    /// [`super::precision`]): hidden states and products in `dtype`, norms and softmaxes in
    /// [`ops::wide_dtype`]. Frozen projection weights are converted once; trainable ones
    /// stay the optimizer's tensors and are cast where they are used, so their gradients
    /// arrive in their own dtype.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Result<Self> {
        for block in &mut self.blocks {
            for linear in block.linears_mut() {
                linear.hold_frozen_in(dtype)?;
            }
        }
        self.lm_head.hold_frozen_in(dtype)?;
        self.compute = dtype;
        Ok(self)
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Compute dtype of the model (its weights' unless [`Llama::with_compute_dtype`] set
    /// another).
    pub fn dtype(&self) -> DType {
        self.compute
    }

    /// Device holding the weights.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    fn run(
        &self,
        input_ids: &Tensor,
        padding: Option<&Tensor>,
        mut cache: Option<&mut GenerationCache>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        if offset + t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} positions exceeds max_position_embeddings {}",
                offset + t,
                self.cfg.max_position_embeddings
            );
        }
        let narrow = |r: &RopeTables| -> Result<RopeTables> {
            Ok(RopeTables {
                cos: r.cos.narrow(0, offset, t)?,
                sin: r.sin.narrow(0, offset, t)?,
            })
        };
        let rope = narrow(&self.rope)?;
        let rope_local = self.rope_local.as_ref().map(narrow).transpose()?;
        let wide = ops::wide_dtype(self.compute);
        let mask_of = |window| ops::attention_mask(t, offset, padding, window, wide, self.device());
        let mask = mask_of(None)?;
        let mask_local = match self.sliding_window {
            Some(w) if offset + t > w => Some(mask_of(Some(w))?),
            _ => None,
        };
        let mut xs = candle_nn::Embedding::new(self.embed_tokens.clone(), self.cfg.hidden_size)
            .forward(input_ids)?
            .to_dtype(self.compute)?;
        if let Some(scale) = self.embed_scale {
            xs = (xs * scale)?;
        }
        for (layer, block) in self.blocks.iter().enumerate() {
            let (rope, mask) = match block.local {
                true => (
                    rope_local.as_ref().unwrap_or(&rope),
                    mask_local.as_ref().unwrap_or(&mask),
                ),
                false => (&rope, &mask),
            };
            xs = match (self.checkpoint_blocks, cache.as_deref_mut()) {
                (true, None) => {
                    let (block, rope, mask) = (block.clone(), rope.clone(), mask.clone());
                    let f: BlockFn = Arc::new(move |x| block.forward(x, &rope, &mask, None));
                    checkpointed(&xs, f, &self.recompute)?
                }
                (_, cache) => block.forward(&xs, rope, mask, cache.map(|c| (c, layer)))?,
            };
        }
        if let Some(cache) = cache {
            cache.len += t;
        }
        debug_assert_eq!(xs.dims(), &[b, t, self.cfg.hidden_size]);
        self.norm.forward(&xs)
    }
}

impl CausalLm for Llama {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    fn num_layers(&self) -> usize {
        self.cfg.num_hidden_layers
    }

    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.run(input_ids, attention_mask, None)
    }

    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.logits(hidden)
    }

    fn target_logprobs(&self, rows: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
        self.lm_head
            .target_logprobs(rows, targets, temperature, &self.recompute)
    }

    fn entropies(&self, rows: &Tensor, temperature: f64) -> Result<Tensor> {
        self.lm_head.entropies(rows, temperature)
    }

    fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.recompute.clear()?;
        let mut grads = loss.backward()?;
        self.recompute.merge_into(&mut grads)?;
        Ok(grads)
    }

    fn forward_cached(&self, tokens: &Tensor, cache: &mut GenerationCache) -> Result<Tensor> {
        if cache.layers.len() != self.blocks.len() {
            candle_core::bail!(
                "kv cache has {} layers, model has {}",
                cache.layers.len(),
                self.blocks.len()
            );
        }
        let hidden = self.run(tokens, None, Some(cache))?;
        self.logits_from_hidden(&hidden)
    }
}

/// Index of the largest logit in the last position of `logits: [1, t, vocab]`.
pub fn argmax_last(logits: &Tensor) -> Result<u32> {
    let t = logits.dim(1)?;
    logits
        .narrow(1, t - 1, 1)?
        .flatten_all()?
        .argmax(D::Minus1)?
        .to_scalar::<u32>()
}
