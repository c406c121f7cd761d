//! A trainable llama-architecture causal language model.
//!
//! [`Llama`] follows Hugging Face's `LlamaForCausalLM`: token embeddings, pre-norm
//! decoder blocks (RMSNorm, grouped-query attention with non-interleaved rotary
//! embeddings, SiLU-gated MLP), a final RMSNorm and the output projection (tied to the
//! embeddings or `lm_head`). Weights use the Hugging Face tensor names.
//!
//! The training path, [`CausalLm::forward`], keeps no state; generation goes through
//! [`CausalLm::forward_cached`] with an explicit [`KvCache`]. Other architectures can be
//! added by implementing [`CausalLm`].

use super::config::LlamaConfig;
use super::lora::{LinearKind, LoraConfig, LoraLinear};
use super::ops;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// A causal language model that can be trained and sampled from.
pub trait CausalLm {
    /// Size of the vocabulary (last dimension of the logits).
    fn vocab_size(&self) -> usize;

    /// Width of the hidden states returned by [`CausalLm::forward_hidden`].
    fn hidden_size(&self) -> usize;

    /// Number of decoder blocks (entries of a [`KvCache`]).
    fn num_layers(&self) -> usize;

    /// Final normed hidden states `[b, t, hidden]` for `input_ids: [b, t]` (u32).
    ///
    /// `attention_mask` (`[b, t]`, 1 = real token, 0 = padding) hides padded keys.
    /// Positions count from 0 in every row, so pad on the right.
    fn forward_hidden(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>)
        -> Result<Tensor>;

    /// Applies the output projection to hidden states `[.., hidden]`.
    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor>;

    /// Logits `[b, t, vocab]` at every position.
    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.logits_from_hidden(&self.forward_hidden(input_ids, attention_mask)?)
    }

    /// Runs the new `tokens: [b, t]` after those already in `cache`, extends the cache,
    /// and returns the logits `[b, t, vocab]` of the new positions.
    ///
    /// All rows share the same positions and there is no padding mask, so a batch must
    /// hold prompts of equal length.
    fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor>;

    /// An empty cache for this model.
    fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers())
    }
}

/// Keys and values of the positions seen so far, per layer, for generation.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
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

#[derive(Debug, Clone)]
struct Attention {
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    o_proj: LoraLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: Tensor,
    attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
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

impl Attention {
    /// `xs: [b, t, hidden]` at absolute positions `offset..offset + t`; `cos`/`sin` are
    /// the rotary tables of those positions; `mask` is additive `[b|1, 1, t, t_k]`.
    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let split = |x: Tensor, n: usize| x.reshape((b, t, n, d))?.transpose(1, 2);
        let q = ops::rope(&split(self.q_proj.forward(xs)?, h)?, cos, sin)?;
        let mut k = ops::rope(&split(self.k_proj.forward(xs)?, kvh)?, cos, sin)?;
        let mut v = split(self.v_proj.forward(xs)?, kvh)?.contiguous()?;
        if let Some((cache, layer)) = cache {
            (k, v) = cache.append(layer, &k, &v)?;
        }
        let t_k = k.dim(2)?;
        // Grouped-query attention without copying keys: the `h / kvh` query heads that
        // share a key head are stacked along the sequence axis.
        let rep = h / kvh;
        let q = q.reshape((b, kvh, rep * t, d))?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?
            .reshape((b, h, t, t_k))?
            .broadcast_add(mask)?;
        let probs = ops::softmax_last_dim(&scores)?.reshape((b, kvh, rep * t, t_k))?;
        let out = probs
            .matmul(&v)?
            .reshape((b, h, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, h * d))?;
        self.o_proj.forward(&out)
    }
}

impl Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.silu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}

/// Llama-architecture causal LM (see the module docs).
#[derive(Debug, Clone)]
pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: LoraLinear,
    cos: Tensor,
    sin: Tensor,
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
            lora.target_kinds().map_err(invalid)?;
        }
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed_tokens = vb.get((v, h), "model.embed_tokens.weight")?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let lin = |kind| load_linear(&vb, cfg, l, kind, lora);
            let prefix = format!("model.layers.{l}");
            blocks.push(Block {
                input_layernorm: vb.get(h, &format!("{prefix}.input_layernorm.weight"))?,
                attn: Attention {
                    q_proj: lin(LinearKind::QProj)?,
                    k_proj: lin(LinearKind::KProj)?,
                    v_proj: lin(LinearKind::VProj)?,
                    o_proj: lin(LinearKind::OProj)?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.kv_heads(),
                    head_dim: cfg.head_size(),
                },
                post_attention_layernorm: vb
                    .get(h, &format!("{prefix}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate_proj: lin(LinearKind::GateProj)?,
                    up_proj: lin(LinearKind::UpProj)?,
                    down_proj: lin(LinearKind::DownProj)?,
                },
            });
        }
        let norm = vb.get(h, "model.norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            LoraLinear::from_weight(embed_tokens.clone())
        } else {
            LoraLinear::from_weight(vb.get((v, h), "lm_head.weight")?)
        };
        let (cos, sin) = ops::rope_tables(
            cfg.head_size(),
            cfg.max_position_embeddings,
            cfg.rope_theta,
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Compute dtype of the model.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Device holding the weights.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    fn run(
        &self,
        input_ids: &Tensor,
        padding: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
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
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let mask = ops::attention_mask(t, offset, padding, self.dtype(), self.device())?;
        let mut xs = candle_nn::Embedding::new(self.embed_tokens.clone(), self.cfg.hidden_size)
            .forward(input_ids)?;
        let eps = self.cfg.rms_norm_eps;
        for (layer, block) in self.blocks.iter().enumerate() {
            let normed = ops::rms_norm(&xs, &block.input_layernorm, eps)?;
            let layer_cache = cache.as_deref_mut().map(|c| (c, layer));
            let attn = block
                .attn
                .forward(&normed, &cos, &sin, &mask, layer_cache)?;
            xs = (xs + attn)?;
            let normed = ops::rms_norm(&xs, &block.post_attention_layernorm, eps)?;
            xs = (&xs + block.mlp.forward(&normed)?)?;
        }
        if let Some(cache) = cache {
            cache.len += t;
        }
        debug_assert_eq!(xs.dims(), &[b, t, self.cfg.hidden_size]);
        ops::rms_norm(&xs, &self.norm, eps)
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
        self.lm_head.forward(hidden)
    }

    fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
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
