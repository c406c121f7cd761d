//! Text <-> token ids for local models: from a GGUF file's embedded vocabulary (tokenized as
//! llama.cpp does, token for token) or a Hugging Face `tokenizer.json`.
//!
//! GGUF vocabularies: SentencePiece ([`spm`]) and byte-level BPE ([`bpe`], split into words by
//! [`bpe_pre`]), with special tokens, BOS/EOS and decoding in [`vocab`].

mod bpe;
mod bpe_pre;
mod export;
mod lookup;
mod spm;
mod unicode_flags;
mod vocab;

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

use vocab::Vocab;

/// More characters than any token covers, for a cheap bound before tokenizing: nearly every
/// token of the supported vocabularies covers at most 16 characters.
pub const MAX_CHARS_PER_TOKEN: usize = 64;

/// Whether texts of `chars` characters in all surely take more than `max_tokens` tokens, so
/// that a record far beyond any model's context is refused without tokenizing it (a 200 MB
/// line took 4.5 GB to tokenize).
pub fn surely_over_tokens(chars: usize, max_tokens: usize) -> bool {
    chars > MAX_CHARS_PER_TOKEN.saturating_mul(max_tokens)
}

/// Which implementation turns text into ids.
#[derive(Clone)]
enum Engine {
    /// A GGUF vocabulary, tokenized as llama.cpp does.
    Gguf(Arc<Vocab>),
    /// A Hugging Face `tokenizer.json`.
    Hf(Box<Tokenizer>),
}

/// A tokenizer plus the special tokens generation needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Engine,
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
        let vocab = Vocab::from_gguf(content, path)?;
        let mut stop_ids: Vec<u32> = vocab.eos.into_iter().collect();
        for end in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"] {
            if let Some(id) = vocab.id(end) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        let bos_id = if vocab.add_bos { vocab.bos } else { None };
        let special_texts = vocab.control_texts();
        Ok(Self {
            inner: Engine::Gguf(Arc::new(vocab)),
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
            inner: Engine::Hf(Box::new(inner)),
            stop_ids,
            bos_id: bos,
            special_texts,
        })
    }

    /// Token ids of `text`, after [`Self::bos_id`]; special-token literals in it become
    /// special tokens. A GGUF vocabulary that asks for it (`tokenizer.ggml.add_eos_token`)
    /// also gets EOS at the end.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Like [`Self::encode`], but special-token literals in `text` stay text, as
    /// `llama-perplexity` tokenizes (GGUF vocabularies; a Hugging Face tokenizer always
    /// matches its added tokens).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos_id.into_iter().collect();
        match &self.inner {
            Engine::Gguf(vocab) => {
                ids.extend(vocab.tokenize_with(text, parse_special)?);
                if vocab.add_eos {
                    ids.extend(vocab.eos);
                }
            }
            Engine::Hf(tok) => {
                let enc = tok
                    .encode(text, false)
                    .map_err(|e| anyhow!("tokenizer failed: {e}"))?;
                ids.extend_from_slice(enc.get_ids());
            }
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Engine::Gguf(vocab) => Ok(vocab.detokenize(ids)),
            Engine::Hf(tok) => tok
                .decode(ids, true)
                .map_err(|e| anyhow!("tokenizer failed to decode: {e}")),
        }
    }

    /// Number of token ids the tokenizer can produce (its vocabulary with added tokens).
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Engine::Gguf(vocab) => vocab.tokens.len(),
            Engine::Hf(tok) => tok.get_vocab_size(true),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Engine::Gguf(vocab) => vocab.id(token),
            Engine::Hf(tok) => tok.token_to_id(token),
        }
    }

    /// Serialized `tokenizer.json`, for checkpoints that other tools load.
    pub fn to_json(&self) -> Result<String> {
        match &self.inner {
            Engine::Gguf(vocab) => export::to_json(vocab),
            Engine::Hf(tok) => tok
                .to_string(true)
                .map_err(|e| anyhow!("cannot serialize tokenizer.json: {e}")),
        }
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

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn pairs_line_far_beyond_context_is_refused_by_characters() {
        // 64 characters per token: 512 tokens allow 32 768 characters, not one more.
        assert!(!surely_over_tokens(32_768, 512));
        assert!(surely_over_tokens(32_769, 512));
        // A 200 MB record against an 8192-token context.
        assert!(surely_over_tokens(200_000_000, 8192));
        assert!(!surely_over_tokens(usize::MAX, usize::MAX));
    }
}
