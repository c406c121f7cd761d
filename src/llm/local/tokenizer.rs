//! Text <-> token ids for local models: from a GGUF file's embedded vocabulary or a
//! Hugging Face `tokenizer.json`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

/// A tokenizer plus the special tokens generation needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Tokens that end a completion (end of text, end of turn).
    pub stop_ids: Vec<u32>,
    /// Prepended to every prompt when the model expects it.
    pub bos_id: Option<u32>,
    /// Literal text of every special token, so user text can be kept from posing as one.
    pub special_texts: Vec<String>,
}

impl TextTokenizer {
    /// Builds the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let md = &content.metadata;
        let get = |k: &str| {
            md.get(k)
                .ok_or_else(|| anyhow!("{}: no `{k}` in GGUF metadata", path.display()))
        };
        let kind = get("tokenizer.ggml.model")?.to_string()?.clone();
        if kind != "gpt2" {
            bail!(
                "{}: tokenizer type `{kind}` is not supported yet (byte-level BPE `gpt2` is); \
                 pass a model folder with a tokenizer.json instead",
                path.display()
            );
        }
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
            .to_vec()?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<candle_core::Result<_>>()?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|t| t.to_i32())
                .collect::<candle_core::Result<_>>()?,
            None => vec![1; tokens.len()],
        };
        let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")?
            .to_vec()?
            .iter()
            .map(|v| {
                let s = v.to_string()?;
                Ok(match s.split_once(' ') {
                    Some((a, b)) => (a.to_string(), b.to_string()),
                    None => (s.clone(), String::new()),
                })
            })
            .collect::<candle_core::Result<_>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("{}: cannot build the BPE tokenizer: {e}", path.display()))?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        // SmolLM-style vocabularies split digits one by one before the byte-level split.
        let pre_tok: PreTokenizerWrapper = if pre == "smollm" {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(byte_level));
        // Token type 3 = control, 4 = user-defined: matched whole in text, never split.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner.add_special_tokens(&special);
        let id_of = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let mut stop_ids: Vec<u32> = id_of("tokenizer.ggml.eos_token_id").into_iter().collect();
        for end in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(id) = inner.token_to_id(end) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        let bos_id = if add_bos {
            id_of("tokenizer.ggml.bos_token_id")
        } else {
            None
        };
        let special_texts = special.iter().map(|t| t.content.clone()).collect();
        Ok(Self {
            inner,
            stop_ids,
            bos_id,
            special_texts,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`; `eos` names the end tokens from the model config.
    pub fn from_file(path: &Path, eos: &[u32], bos: Option<u32>) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let mut stop_ids = eos.to_vec();
        for end in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(id) = inner.token_to_id(end) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        let special_texts = inner
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .collect();
        Ok(Self {
            inner,
            stop_ids,
            bos_id: bos,
            special_texts,
        })
    }

    /// Token ids of `text`; special-token literals in it become special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizer failed: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.bos_id);
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids`, special tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("tokenizer failed to decode: {e}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Serialized `tokenizer.json`, for checkpoints that other tools load.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| anyhow!("cannot serialize tokenizer: {e}"))
            .context("writing tokenizer.json")
    }

    /// Keeps user text from containing special-token literals (which would otherwise be read
    /// as real turn markers): a zero-width space is put after their first character.
    pub fn neutralize(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.special_texts {
            if out.contains(s.as_str()) {
                let mut chars = s.chars();
                let first = chars.next().unwrap_or_default();
                let broken = format!("{first}\u{200b}{}", chars.as_str());
                out = out.replace(s.as_str(), &broken);
            }
        }
        out
    }
}
