//! Model configuration in the Hugging Face `config.json` format.
//!
//! [`LlamaConfig`] reads the fields of a `LlamaForCausalLM` config that matter for the
//! forward pass and ignores the rest (`torch_dtype`, `use_cache`, ...), so real hub
//! configs parse as they are. When written back it carries `architectures` and
//! `model_type`, so other tools recognise the folder as a llama checkpoint.

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

/// Hyper-parameters of a llama-architecture causal language model.
///
/// Field names follow the Hugging Face `config.json` of `LlamaForCausalLM`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Always `["LlamaForCausalLM"]` when written.
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    /// Always `"llama"` when written.
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
    /// Activation of the MLP; only `"silu"` is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// RoPE scaling variants are not supported; must be absent or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// Biases on the attention projections are not supported.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP projections are not supported.
    #[serde(default)]
    pub mlp_bias: bool,
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
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
        }
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
        ensure!(
            self.model_type == "llama",
            "unsupported model_type {:?} (only \"llama\")",
            self.model_type
        );
        ensure!(
            self.hidden_act == "silu",
            "unsupported hidden_act {:?} (only \"silu\")",
            self.hidden_act
        );
        if let Some(scaling) = &self.rope_scaling {
            if !scaling.is_null() {
                bail!("rope_scaling is not supported (got {scaling})");
            }
        }
        ensure!(
            !self.attention_bias && !self.mlp_bias,
            "attention_bias / mlp_bias are not supported"
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

    /// Writes the config as pretty JSON, with the llama `architectures` and `model_type`.
    pub fn to_file(&self, path: &Path) -> Result<()> {
        let mut cfg = self.clone();
        cfg.architectures = default_architectures();
        cfg.model_type = default_model_type();
        let text = serde_json::to_string_pretty(&cfg)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Names and shapes of every weight tensor, in Hugging Face naming.
    ///
    /// `lm_head.weight` is listed only when the embeddings are not tied.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_size();
        let kv = self.kv_heads() * self.head_size();
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.extend([
                (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
                (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            ]);
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }
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
    fn rejects_rope_scaling() {
        let mut cfg = LlamaConfig::new(64, 16, 32, 2, 4, 2);
        cfg.rope_scaling = Some(serde_json::json!({"rope_type": "llama3"}));
        assert!(cfg.validate().is_err());
    }
}
