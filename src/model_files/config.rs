//! Model configuration in the Hugging Face `config.json` format.
//!
//! [`LlamaConfig`] reads the fields of the `config.json` of the supported families (llama,
//! mistral, qwen2, qwen3, gemma3_text, phi3) that matter for the forward pass and ignores
//! the rest (`torch_dtype`, `use_cache`, ...), so real hub configs parse as they are. When
//! written back it carries the family's `architectures` and `model_type`, so other tools
//! recognise the folder.
//!
//! What a family computes differently is said once, by [`LlamaConfig::traits`] (the switches
//! the inference engine shares, see [`ArchTraits`]) and the tensor-level methods next to it
//! (biases, q/k norms, Gemma's norms around each sub-layer and their `1 + w` scale, Phi-3's
//! fused projections).

use super::arch::{Activation, Arch, ArchTraits, RopeParams, RopeStyle};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One token id or a list of them (Hugging Face allows both for `eos_token_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids, any of which ends generation.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The model families a config may name (`model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama`: Llama 1/2/3, TinyLlama, SmolLM.
    Llama,
    /// `mistral`: llama with a sliding window.
    Mistral,
    /// `qwen2`: q/k/v biases.
    Qwen2,
    /// `qwen3`: q/k RMS norms.
    Qwen3,
    /// `gemma3_text`: norms around attention and feed-forward (scaled by `1 + w`), q/k norms,
    /// scaled embeddings, GELU, local and global layers.
    Gemma3,
    /// `phi3`: fused `qkv_proj` and `gate_up_proj`.
    Phi3,
}

impl Family {
    const ALL: [Family; 6] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma3,
        Family::Phi3,
    ];

    /// The family named by a `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type)
    }

    /// The family of a GGUF `general.architecture`.
    pub fn from_arch(arch: Arch) -> Self {
        match arch {
            Arch::Llama => Family::Llama,
            Arch::Qwen2 => Family::Qwen2,
            Arch::Qwen3 => Family::Qwen3,
            Arch::Phi3 => Family::Phi3,
            Arch::Gemma3 => Family::Gemma3,
        }
    }

    /// `model_type` in `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3_text",
            Family::Phi3 => "phi3",
        }
    }

    /// The transformers class, written as `architectures`.
    pub fn class_name(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
        }
    }

    /// The engine's architecture (mistral runs llama's graph).
    pub fn arch(self) -> Arch {
        match self {
            Family::Llama | Family::Mistral => Arch::Llama,
            Family::Qwen2 => Arch::Qwen2,
            Family::Qwen3 => Arch::Qwen3,
            Family::Gemma3 => Arch::Gemma3,
            Family::Phi3 => Arch::Phi3,
        }
    }

    /// Whether GGUF files store this family's q/k rows permuted to interleaved rotary pairs
    /// (llama.cpp does it for the llama graph only).
    pub fn gguf_permutes_qk(self) -> bool {
        self.arch() == Arch::Llama
    }
}

/// Hyper-parameters of a decoder-only causal language model of one of the [`Family`]s.
///
/// Field names follow the Hugging Face `config.json` of the family's `*ForCausalLM`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// The family's class (`["LlamaForCausalLM"]`, ...) when written.
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    /// The family (see [`Family`]); `"llama"` when absent.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Number of rows of the embedding matrix.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SiLU-gated MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Epsilon of the RMS norms.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Base of the rotary position frequencies.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest sequence the rotary tables cover.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Activation of the MLP gate: `"silu"` or GELU with the tanh approximation
    /// (`"gelu_pytorch_tanh"`).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Gemma's name for the activation; wins over `hidden_act` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// RoPE scaling: absent, `null`, `{"rope_type": "linear", "factor": f}` or Llama 3's
    /// `{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    /// "original_max_position_embeddings"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Biases on the q/k/v projections (implied for qwen2; not supported elsewhere).
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP projections are not supported.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Keys a sliding-window layer sees, its own position included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen 2: whether `sliding_window` is used at all (off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen 2: layers below this one stay global when the window is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Per layer `"sliding_attention"` or `"full_attention"` (newer configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3 (older configs): every n-th layer is global, the others local (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 3: queries are scaled by `query_pre_attn_scalar^-1/2` instead of the head size's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 3: rope base of the local layers (default 10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Final logits become `c · tanh(logits / c)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 2's attention-score soft-capping: not supported, must be absent or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// Share of each head that is rotated: only 1 (all of it) is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
}

fn default_architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".to_string()]
}
fn default_model_type() -> String {
    "llama".to_string()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".to_string()
}

impl LlamaConfig {
    /// A config with the given sizes and llama defaults for everything else.
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> Self {
        Self {
            architectures: default_architectures(),
            model_type: default_model_type(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: None,
            rms_norm_eps: default_rms_norm_eps(),
            rope_theta: default_rope_theta(),
            max_position_embeddings: default_max_position_embeddings(),
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
            hidden_act: default_hidden_act(),
            hidden_activation: None,
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
            sliding_window: None,
            use_sliding_window: None,
            max_window_layers: None,
            layer_types: None,
            sliding_window_pattern: None,
            query_pre_attn_scalar: None,
            rope_local_base_freq: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            partial_rotary_factor: None,
        }
    }

    /// A config of `family` with the given sizes and the family's defaults (Gemma 3: a
    /// sliding window of 512 tokens, every sixth layer global).
    pub fn for_family(family: Family, sizes: [usize; 6]) -> Self {
        let [vocab, hidden, inter, layers, heads, kv_heads] = sizes;
        let mut cfg = Self::new(vocab, hidden, inter, layers, heads, kv_heads);
        cfg.model_type = family.model_type().to_string();
        cfg.architectures = vec![family.class_name().to_string()];
        if family == Family::Gemma3 {
            cfg.hidden_act = "gelu_pytorch_tanh".to_string();
            cfg.hidden_activation = Some("gelu_pytorch_tanh".to_string());
            cfg.sliding_window = Some(512);
            cfg.sliding_window_pattern = Some(6);
            cfg.rope_theta = 1_000_000.0;
        }
        cfg
    }

    /// The family named by `model_type`.
    pub fn family(&self) -> Result<Family> {
        Family::from_model_type(&self.model_type).with_context(|| {
            let names: Vec<&str> = Family::ALL.iter().map(|f| f.model_type()).collect();
            format!(
                "unsupported model_type {:?} (supported: {})",
                self.model_type,
                names.join(", ")
            )
        })
    }

    fn family_or_llama(&self) -> Family {
        self.family().unwrap_or(Family::Llama)
    }

    /// Whether the q/k/v projections have biases (`*.bias` tensors).
    pub fn has_qkv_bias(&self) -> bool {
        self.family_or_llama() == Family::Qwen2
    }

    /// Whether each query and key head is RMS-normed before the rotation (`q_norm`, `k_norm`).
    pub fn has_qk_norm(&self) -> bool {
        matches!(self.family_or_llama(), Family::Qwen3 | Family::Gemma3)
    }

    /// Whether attention and feed-forward outputs are normed before their residual add, with
    /// the pre-feed-forward norm named `pre_feedforward_layernorm` (Gemma).
    pub fn has_sandwich_norms(&self) -> bool {
        self.family_or_llama() == Family::Gemma3
    }

    /// Added to every RMS-norm weight before scaling (Gemma stores `w` and scales by `1 + w`).
    pub fn norm_offset(&self) -> f64 {
        match self.family_or_llama() {
            Family::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    /// Whether q/k/v are one `qkv_proj` and gate/up one `gate_up_proj` (Phi-3).
    pub fn has_fused_projections(&self) -> bool {
        self.family_or_llama() == Family::Phi3
    }

    fn activation(&self) -> Result<Activation> {
        let name = self.hidden_activation.as_ref().unwrap_or(&self.hidden_act);
        Ok(match name.as_str() {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_tanh" => Activation::GeluTanh,
            other => {
                bail!("unsupported activation {other:?} (silu and gelu_pytorch_tanh are supported)")
            }
        })
    }

    /// Which layers are local (sliding window).
    fn local_layers(&self) -> Result<Vec<bool>> {
        let n = self.num_hidden_layers;
        if let Some(types) = &self.layer_types {
            ensure!(
                types.len() == n,
                "layer_types has {} entries for {n} layers",
                types.len()
            );
            return types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => bail!("unknown layer type {other:?} in layer_types"),
                })
                .collect();
        }
        let windowed = self.sliding_window.is_some();
        Ok(match self.family_or_llama() {
            Family::Gemma3 => {
                let every = self.sliding_window_pattern.unwrap_or(6);
                (0..n).map(|i| every == 0 || (i + 1) % every != 0).collect()
            }
            Family::Mistral | Family::Phi3 => vec![windowed; n],
            Family::Qwen2 if windowed && self.use_sliding_window == Some(true) => {
                let first = self.max_window_layers.unwrap_or(0);
                (0..n).map(|i| i >= first).collect()
            }
            _ => vec![false; n],
        })
    }

    /// Llama 3's per-frequency rope divisors (`rope_scaling.rope_type == "llama3"`), as
    /// llama.cpp stores them in `rope_freqs.weight`.
    pub fn rope_divisors(&self) -> Result<Option<Vec<f32>>> {
        let Some(scaling) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) else {
            return Ok(None);
        };
        if rope_type(scaling) != Some("llama3") {
            return Ok(None);
        }
        let field = |name: &str| -> Result<f64> {
            scaling
                .get(name)
                .and_then(|v| v.as_f64())
                .with_context(|| format!("llama3 rope_scaling lacks the number {name:?}"))
        };
        let factor = field("factor")?;
        let low = field("low_freq_factor")?;
        let high = field("high_freq_factor")?;
        let old_context = field("original_max_position_embeddings")?;
        ensure!(
            factor > 0.0 && high > low,
            "llama3 rope_scaling needs factor > 0 and high_freq_factor > low_freq_factor"
        );
        let d = self.head_size();
        let divisors = (0..d / 2)
            .map(|i| {
                let inv_freq = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64);
                let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
                let divisor = if wavelen < old_context / high {
                    1.0
                } else if wavelen > old_context / low {
                    factor
                } else {
                    let smooth = (old_context / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                };
                divisor as f32
            })
            .collect();
        Ok(Some(divisors))
    }

    /// The switches the inference engine and the trainable model share (rope style as the
    /// engine computes after [`Family::gguf_permutes_qk`]).
    pub fn traits(&self) -> Result<ArchTraits> {
        let family = self.family()?;
        let layers = self.num_hidden_layers;
        let mut t = ArchTraits::llama(layers, self.rope_theta as f32);
        t.arch = family.arch();
        if !family.gguf_permutes_qk() {
            t.rope_style = RopeStyle::Neox;
        }
        t.activation = self.activation()?;
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            match rope_type(scaling) {
                Some("linear") => {
                    let factor = scaling.get("factor").and_then(|v| v.as_f64());
                    let factor = factor
                        .filter(|f| *f > 0.0)
                        .context("linear rope_scaling needs a positive \"factor\"")?;
                    t.rope.freq_scale = (1.0 / factor) as f32;
                    t.rope_local.freq_scale = t.rope.freq_scale;
                }
                Some("llama3") => {}
                _ => bail!("rope_scaling {scaling} is not supported (linear and llama3 are)"),
            }
        }
        t.final_softcap = self
            .final_logit_softcapping
            .filter(|c| *c > 0.0)
            .map(|c| c as f32);
        t.attn_scale = self.query_pre_attn_scalar.map(|s| (1.0 / s.sqrt()) as f32);
        t.local_layers = self.local_layers()?;
        if t.local_layers.contains(&true) {
            let window = self
                .sliding_window
                .filter(|w| *w > 0)
                .context("layers are local (sliding window) but sliding_window is not set")?;
            t.sliding_window = Some(window);
        }
        if family == Family::Gemma3 {
            t.embed_scale = Some((self.hidden_size as f32).sqrt());
            t.rope_local = RopeParams {
                theta: self.rope_local_base_freq.unwrap_or(10_000.0) as f32,
                freq_scale: 1.0,
            };
        }
        Ok(t)
    }

    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks that the model is one this crate can run.
    pub fn validate(&self) -> Result<()> {
        let family = self.family()?;
        self.traits()?;
        self.rope_divisors()?;
        ensure!(
            !self.mlp_bias && (!self.attention_bias || family == Family::Qwen2),
            "attention_bias / mlp_bias are not supported for model_type {:?}",
            self.model_type
        );
        ensure!(
            self.attn_logit_softcapping.is_none_or(|c| c <= 0.0),
            "attn_logit_softcapping (Gemma 2) is not supported"
        );
        ensure!(
            self.partial_rotary_factor.is_none_or(|f| f == 1.0),
            "partial_rotary_factor {:?} is not supported (only rotating whole heads)",
            self.partial_rotary_factor
        );
        ensure!(
            self.vocab_size > 0 && self.hidden_size > 0 && self.num_hidden_layers > 0,
            "vocab_size, hidden_size and num_hidden_layers must be positive"
        );
        ensure!(
            self.num_attention_heads > 0
                && self.kv_heads() > 0
                && self.num_attention_heads.is_multiple_of(self.kv_heads()),
            "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
            self.num_attention_heads,
            self.kv_heads()
        );
        let head = self.head_size();
        ensure!(
            head > 0 && head.is_multiple_of(2),
            "head size {head} must be even for rotary embeddings"
        );
        ensure!(
            self.head_dim.is_some() || head * self.num_attention_heads == self.hidden_size,
            "hidden_size {} is not divisible by num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        Ok(())
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(cfg)
    }

    /// Writes the config as pretty JSON, with the family's `architectures` and `model_type`.
    pub fn to_file(&self, path: &Path) -> Result<()> {
        let family = self.family()?;
        let mut cfg = self.clone();
        cfg.architectures = vec![family.class_name().to_string()];
        cfg.model_type = family.model_type().to_string();
        let text = serde_json::to_string_pretty(&cfg)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Names and shapes of every weight tensor, in Hugging Face naming.
    ///
    /// `lm_head.weight` is listed only when the embeddings are not tied.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let d = self.head_size();
        let q = self.num_attention_heads * d;
        let kv = self.kv_heads() * d;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut add = |name: &str, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
            if self.has_fused_projections() {
                add("self_attn.qkv_proj.weight", vec![q + 2 * kv, h]);
                add("mlp.gate_up_proj.weight", vec![2 * i, h]);
            } else {
                add("self_attn.q_proj.weight", vec![q, h]);
                add("self_attn.k_proj.weight", vec![kv, h]);
                add("self_attn.v_proj.weight", vec![kv, h]);
                add("mlp.gate_proj.weight", vec![i, h]);
                add("mlp.up_proj.weight", vec![i, h]);
            }
            if self.has_qkv_bias() {
                add("self_attn.q_proj.bias", vec![q]);
                add("self_attn.k_proj.bias", vec![kv]);
                add("self_attn.v_proj.bias", vec![kv]);
            }
            if self.has_qk_norm() {
                add("self_attn.q_norm.weight", vec![d]);
                add("self_attn.k_norm.weight", vec![d]);
            }
            add("self_attn.o_proj.weight", vec![h, q]);
            add("mlp.down_proj.weight", vec![h, i]);
            add("input_layernorm.weight", vec![h]);
            add("post_attention_layernorm.weight", vec![h]);
            if self.has_sandwich_norms() {
                add("pre_feedforward_layernorm.weight", vec![h]);
                add("post_feedforward_layernorm.weight", vec![h]);
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }
}

/// `rope_type` of a `rope_scaling` object (`type` in older configs).
fn rope_type(scaling: &serde_json::Value) -> Option<&str> {
    scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_hub_config_and_ignores_unknown_fields() {
        let text = r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,
            "bos_token_id":1,"eos_token_id":2,"hidden_act":"silu","hidden_size":576,
            "intermediate_size":1536,"max_position_embeddings":8192,"model_type":"llama",
            "num_attention_heads":9,"num_hidden_layers":30,"num_key_value_heads":3,
            "rms_norm_eps":1e-05,"rope_scaling":null,"rope_theta":100000,
            "tie_word_embeddings":true,"torch_dtype":"bfloat16","vocab_size":49152}"#;
        let cfg: LlamaConfig = serde_json::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.head_size(), 64);
        assert_eq!(cfg.kv_heads(), 3);
        assert_eq!(cfg.eos_token_id.as_ref().unwrap().to_vec(), vec![2]);
        assert_eq!(cfg.weight_shapes().len(), 1 + 30 * 9 + 1);
    }

    #[test]
    fn rejects_unknown_rope_scaling_and_incomplete_llama3() {
        let mut cfg = LlamaConfig::new(64, 16, 32, 2, 4, 2);
        cfg.rope_scaling = Some(serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
        assert!(cfg.validate().is_err());
        cfg.rope_scaling = Some(serde_json::json!({"rope_type": "llama3"}));
        assert!(cfg.validate().is_err());
        cfg.model_type = "falcon".to_string();
        let err = format!("{:#}", cfg.validate().unwrap_err());
        assert!(
            err.contains("falcon") && err.contains("gemma3_text"),
            "{err}"
        );
    }

    /// Llama 3.1's scaling (factor 8, low 1, high 4, 8192 original positions) on 64-wide heads
    /// with base 500 000: high frequencies untouched, low ones divided by 8, a smooth ramp
    /// between (values from the formula in transformers' `_compute_llama3_parameters`).
    #[test]
    fn llama3_rope_divisors() {
        let mut cfg = LlamaConfig::new(64, 64, 32, 1, 1, 1);
        cfg.rope_theta = 500_000.0;
        cfg.rope_scaling = Some(serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}));
        cfg.validate().unwrap();
        let div = cfg.rope_divisors().unwrap().unwrap();
        assert_eq!(div.len(), 32);
        assert_eq!(div[0], 1.0);
        assert_eq!(div[31], 8.0);
        // Frequency 15 has a wavelength of 2π·500000^(30/64) ≈ 2 945 positions, between
        // 8192 / 4 and 8192 / 1: on the ramp.
        let inv = |i: f64| 1.0 / 500_000f64.powf(2.0 * i / 64.0);
        let wavelen = 2.0 * std::f64::consts::PI / inv(15.0);
        let smooth = (8192.0 / wavelen - 1.0) / 3.0;
        let want = 1.0 / ((1.0 - smooth) / 8.0 + smooth);
        assert!(
            (div[15] as f64 - want).abs() < 1e-5,
            "{} vs {want}",
            div[15]
        );
        assert!(div[15] > 1.0 && div[15] < 8.0);
    }

    /// A Gemma 3 text config as the hub writes it: GELU, 1/√query_pre_attn_scalar, every sixth
    /// layer global with its own rope base, sandwich norms and q/k norms in the tensor list.
    #[test]
    fn parses_a_gemma3_config() {
        let text = r#"{"architectures":["Gemma3ForCausalLM"],"model_type":"gemma3_text",
            "hidden_activation":"gelu_pytorch_tanh","hidden_size":640,"intermediate_size":2048,
            "num_hidden_layers":18,"num_attention_heads":4,"num_key_value_heads":1,
            "head_dim":256,"query_pre_attn_scalar":256,"rope_theta":1000000.0,
            "rope_local_base_freq":10000.0,"sliding_window":512,"rms_norm_eps":1e-06,
            "vocab_size":262144,"max_position_embeddings":32768,"rope_scaling":null,
            "final_logit_softcapping":null,"attn_logit_softcapping":null,
            "tie_word_embeddings":true}"#;
        let cfg: LlamaConfig = serde_json::from_str(text).unwrap();
        cfg.validate().unwrap();
        let t = cfg.traits().unwrap();
        assert_eq!(t.arch, Arch::Gemma3);
        assert_eq!(t.activation, Activation::GeluTanh);
        assert_eq!(t.attn_scale, Some(1.0 / 16.0));
        assert_eq!(t.sliding_window, Some(512));
        let global: Vec<usize> = (0..18).filter(|&i| !t.local_layers[i]).collect();
        assert_eq!(global, vec![5, 11, 17]);
        assert_eq!((t.rope.theta, t.rope_local.theta), (1e6, 1e4));
        assert_eq!(t.embed_scale, Some(640f32.sqrt()));
        let names: Vec<String> = cfg.weight_shapes().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"model.layers.0.pre_feedforward_layernorm.weight".into()));
        assert!(names.contains(&"model.layers.0.self_attn.k_norm.weight".into()));
        assert_eq!(cfg.weight_shapes().len(), 1 + 18 * 13 + 1);
    }
}
