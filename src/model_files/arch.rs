//! What each architecture does differently from llama, read from a GGUF file's metadata.
//!
//! The graph in `gguf_model.rs` is shared: pre-norm blocks of grouped-query attention and a
//! gated feed-forward. An architecture differs only in the switches of [`ArchTraits`], set in
//! one function per architecture below, after llama.cpp's `src/models/*.cpp`. Optional tensors
//! (q/k/v biases, q/k norms, post-norms, fused projections) are loaded wherever the file holds
//! them, so the per-architecture functions only set what the tensors cannot say.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};

/// The architectures the local engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3, Mistral, TinyLlama, SmolLM.
    Llama,
    /// Qwen 2 / 2.5 (q/k/v biases).
    Qwen2,
    /// Qwen 3 (q/k RMS norms).
    Qwen3,
    /// Phi-3 (fused qkv, fused gate/up).
    Phi3,
    /// Gemma 3 (post-norms, q/k norms, scaled embeddings, GELU, local/global layers).
    Gemma3,
}

impl Arch {
    /// The architecture named by `general.architecture`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" | "mistral" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "phi3" => Self::Phi3,
            "gemma3" => Self::Gemma3,
            _ => return None,
        })
    }

    /// Names accepted by [`Arch::from_name`], for error messages.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, phi3, gemma3";
}

/// How rotary embeddings pair a head's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(2i, 2i + 1)`: llama.cpp's `NORM` type (llama's q/k rows are permuted to it).
    Interleaved,
    /// Pairs `(i, i + d/2)`: llama.cpp's `NEOX` type (Qwen, Phi-3, Gemma).
    Neox,
}

/// The feed-forward gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
}

/// Rotary frequencies of one kind of layer.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub theta: f32,
    /// Positions are multiplied by this (linear rope scaling: 1 / factor).
    pub freq_scale: f32,
}

/// Everything that differs between architectures beyond tensor shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchTraits {
    pub arch: Arch,
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// Embeddings are multiplied by this (Gemma: √hidden).
    pub embed_scale: Option<f32>,
    /// Query scale; `None` is 1/√head_dim.
    pub attn_scale: Option<f32>,
    /// Keys a local layer attends to: its own position and the `window - 1` before it.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it is local (sliding window, [`ArchTraits::rope_local`]).
    pub local_layers: Vec<bool>,
    /// Rotary frequencies of global layers (every layer when there are no local ones).
    pub rope: RopeParams,
    /// Rotary frequencies of local layers.
    pub rope_local: RopeParams,
    /// Final logits become `c · tanh(logits / c)`.
    pub final_softcap: Option<f32>,
}

impl ArchTraits {
    /// Llama's graph with `theta` as rope base: what a Hugging Face llama folder runs.
    pub fn llama(layers: usize, theta: f32) -> Self {
        let rope = RopeParams {
            theta,
            freq_scale: 1.0,
        };
        Self {
            arch: Arch::Llama,
            rope_style: RopeStyle::Interleaved,
            activation: Activation::Silu,
            embed_scale: None,
            attn_scale: None,
            sliding_window: None,
            local_layers: vec![false; layers],
            rope_local: rope.clone(),
            rope,
            final_softcap: None,
        }
    }

    /// Reads the traits of `arch` from `md` (keys `{name}.…`).
    pub fn from_gguf(
        arch: Arch,
        md: &Metadata<'_>,
        layers: usize,
        hidden: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let mut t = Self::llama(layers, md.f32("rope.freq_base")?.unwrap_or(10_000.0));
        t.arch = arch;
        if let Some(kind) = md.string("rope.scaling.type")? {
            match kind.as_str() {
                "none" => {}
                "linear" => {
                    let factor = md.f32("rope.scaling.factor")?.unwrap_or(1.0);
                    if factor > 0.0 {
                        t.rope.freq_scale = 1.0 / factor;
                        t.rope_local.freq_scale = 1.0 / factor;
                    }
                }
                // Llama 3's "llama3" scaling is stored as the `rope_freqs` tensor.
                "llama3" => {}
                other => bail!(
                    "{}: rope scaling `{other}` is not supported (none, linear and llama3 are)",
                    md.path.display()
                ),
            }
        }
        t.final_softcap = md.f32("final_logit_softcapping")?.filter(|&c| c > 0.0);
        match arch {
            Arch::Llama => {}
            Arch::Qwen2 | Arch::Qwen3 | Arch::Phi3 => t.rope_style = RopeStyle::Neox,
            Arch::Gemma3 => gemma3(&mut t, md, layers, hidden, head_dim)?,
        }
        Ok(t)
    }

    /// The rotary parameters of layer `li`.
    pub fn rope_of(&self, li: usize) -> &RopeParams {
        match self.local_layers[li] {
            true => &self.rope_local,
            false => &self.rope,
        }
    }

    /// The sliding window of layer `li`, if it is local.
    pub fn window_of(&self, li: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.local_layers[li])
    }
}

/// Gemma 3 (llama.cpp `models/gemma3.cpp`): scaled embeddings, GELU, rope NEOX, five local
/// layers (sliding window, rope base 10 000) for every global one.
fn gemma3(
    t: &mut ArchTraits,
    md: &Metadata<'_>,
    layers: usize,
    hidden: usize,
    head_dim: usize,
) -> Result<()> {
    t.rope_style = RopeStyle::Neox;
    t.activation = Activation::GeluTanh;
    t.embed_scale = Some((hidden as f32).sqrt());
    // Gemma 3 27B scales queries by 1/√(hidden / heads); the others by 1/√head_dim.
    if layers == 62 {
        let heads = md.usize("attention.head_count")?.unwrap_or(1);
        t.attn_scale = Some(1.0 / ((hidden / heads) as f32).sqrt());
    } else {
        t.attn_scale = Some(1.0 / (head_dim as f32).sqrt());
    }
    if let Some(window) = md.usize("attention.sliding_window")?.filter(|&w| w > 0) {
        t.sliding_window = Some(window);
        t.local_layers = match md.get("attention.sliding_window_pattern") {
            Some(Value::Array(flags)) => {
                let flags = flags
                    .iter()
                    .map(|v| v.to_bool())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                if flags.len() != layers {
                    bail!(
                        "{}: sliding_window_pattern has {} entries for {layers} layers",
                        md.path.display(),
                        flags.len()
                    );
                }
                flags
            }
            Some(v) => pattern(v.to_u32()? as usize, layers),
            None => pattern(6, layers),
        };
        t.rope_local = RopeParams {
            theta: md.f32("rope.freq_base_swa")?.unwrap_or(10_000.0),
            freq_scale: 1.0,
        };
    }
    Ok(())
}

/// Every `n`-th layer global, the others local (llama.cpp's `set_swa_pattern`).
fn pattern(n: usize, layers: usize) -> Vec<bool> {
    (0..layers).map(|il| n == 0 || il % n < n - 1).collect()
}

/// A GGUF file's metadata under its architecture's key prefix, with typed getters that say
/// which file and key is wrong.
pub struct Metadata<'a> {
    content: &'a gguf_file::Content,
    prefix: String,
    pub path: &'a Path,
}

impl<'a> Metadata<'a> {
    pub fn new(content: &'a gguf_file::Content, prefix: &str, path: &'a Path) -> Self {
        Self {
            content,
            prefix: prefix.to_string(),
            path,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(&self.key(key))
    }

    fn typed<T>(
        &self,
        key: &str,
        f: impl Fn(&Value) -> candle_core::Result<T>,
    ) -> Result<Option<T>> {
        self.get(key)
            .map(f)
            .transpose()
            .with_context(|| format!("{}: bad value of `{}`", self.path.display(), self.key(key)))
    }

    pub fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.typed(key, |v| match v {
            Value::U64(x) => Ok(*x as usize),
            Value::I64(x) => Ok(*x as usize),
            Value::I32(x) => Ok(*x as usize),
            v => v.to_u32().map(|x| x as usize),
        })
    }

    pub fn f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, |v| match v {
            Value::F64(x) => Ok(*x as f32),
            v => v.to_f32(),
        })
    }

    pub fn string(&self, key: &str) -> Result<Option<String>> {
        self.typed(key, |v| v.to_string().cloned())
    }

    /// A required integer.
    pub fn need_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| {
            anyhow!(
                "{}: no `{}` in GGUF metadata",
                self.path.display(),
                self.key(key)
            )
        })
    }
}

/// The most `context × head_dim` a GGUF file may declare: the rotary tables for the whole
/// context are built at load (`8 · context · head_dim` bytes per kind of layer; at this bound
/// 1 GiB, reached by a context of 2^20 positions with heads of 128).
pub const MAX_ROPE_VALUES: usize = 1 << 27;
/// The largest head size a GGUF file may declare (real models use 64 to 256).
pub const MAX_HEAD_DIM: usize = 1024;

/// Shape hyper-parameters and architecture traits read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The feed-forward width the metadata declares (`feed_forward_length`), if it does.
    pub ff: Option<usize>,
    pub rms_eps: f64,
    pub context: usize,
    pub arch: ArchTraits,
}

impl ModelShape {
    /// The shape and architecture traits in `content`'s metadata.
    pub fn read(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let name = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        let Some(arch) = Arch::from_name(&name) else {
            bail!(
                "{}: architecture `{name}` is not supported by the local backend (supported: \
                 {}); serve it with an OpenAI-compatible server instead",
                path.display(),
                Arch::SUPPORTED
            );
        };
        let md = Metadata::new(content, &name, path);
        let heads = md.need_usize("attention.head_count")?;
        let hidden = md.need_usize("embedding_length")?;
        let layers = md.need_usize("block_count")?;
        let at = path.display();
        ensure!(
            heads > 0 && hidden > 0 && layers > 0,
            "{at}: `{name}.attention.head_count`, `{name}.embedding_length` and \
             `{name}.block_count` must be positive"
        );
        // Every block has several tensors: a count beyond them is a crafted file (and would
        // size per-layer tables from it).
        ensure!(
            layers <= content.tensor_infos.len(),
            "{at}: `{name}.block_count` is {layers} but the file holds only {} tensors",
            content.tensor_infos.len()
        );
        let head_dim = match md.usize("attention.key_length")? {
            Some(d) => d,
            None => md.usize("rope.dimension_count")?.unwrap_or(hidden / heads),
        };
        let kv_heads = md.usize("attention.head_count_kv")?.unwrap_or(heads);
        ensure!(
            kv_heads > 0 && heads.is_multiple_of(kv_heads),
            "{at}: {heads} attention heads are not a multiple of {kv_heads} key/value heads"
        );
        ensure!(
            head_dim > 0 && head_dim.is_multiple_of(2) && head_dim <= MAX_HEAD_DIM,
            "{at}: head size {head_dim} must be even and at most {MAX_HEAD_DIM}"
        );
        let context = md.usize("context_length")?.unwrap_or(2048);
        ensure!(
            context > 0 && context.saturating_mul(head_dim) <= MAX_ROPE_VALUES,
            "{at}: `{name}.context_length` {context} times head size {head_dim} must be between \
             1 and {MAX_ROPE_VALUES}"
        );
        if let Some(rot) = md.usize("rope.dimension_count")? {
            if rot != head_dim {
                bail!(
                    "{}: partial rotary embeddings ({rot} of {head_dim} dimensions) are not \
                     supported",
                    path.display()
                );
            }
        }
        Ok(Self {
            vocab: 0,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            ff: md.usize("feed_forward_length")?,
            rms_eps: md.f32("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f64,
            context,
            arch: ArchTraits::from_gguf(arch, &md, layers, hidden, head_dim)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma3_pattern_makes_every_sixth_layer_global() {
        let p = pattern(6, 18);
        let global: Vec<usize> = (0..18).filter(|&i| !p[i]).collect();
        assert_eq!(global, vec![5, 11, 17]);
        assert!(pattern(0, 3).iter().all(|&l| l));
    }

    #[test]
    fn architecture_names() {
        assert_eq!(Arch::from_name("mistral"), Some(Arch::Llama));
        assert_eq!(Arch::from_name("gemma3"), Some(Arch::Gemma3));
        assert_eq!(Arch::from_name("falcon"), None);
    }
}
