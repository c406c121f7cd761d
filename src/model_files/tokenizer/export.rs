//! A GGUF vocabulary as a Hugging Face `tokenizer.json`, for checkpoint folders that other
//! tools (and [`super::TextTokenizer::from_file`]) load.
//!
//! Byte-level BPE maps one to one. SentencePiece becomes what Hugging Face's own conversion
//! (`LlamaTokenizerFast`) makes of it: BPE with byte fallback whose merges are every split of
//! every token into two tokens, best score first; spaces become `▁` in the normalizer.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab as HfVocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use super::bpe_pre::{PreKind, DEEPSEEK_CJK, DEEPSEEK_LETTERS, DEEPSEEK_PUNCT};
use super::vocab::{Model, Vocab, TYPE_CONTROL, TYPE_UNKNOWN, TYPE_USER_DEFINED};

/// The regexes llama.cpp's hand-written scanners implement, in the `tokenizer.json` form
/// they come from.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Serialized `tokenizer.json` equivalent to `vocab`.
pub(super) fn to_json(vocab: &Vocab) -> Result<String> {
    let hf_vocab: HfVocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut tok = match &vocab.model {
        Model::Bpe { merges, pre } => {
            let bpe = BPE::builder()
                .vocab_and_merges(hf_vocab, merges.pairs())
                .build()
                .map_err(|e| anyhow!("cannot build the BPE model for tokenizer.json: {e}"))?;
            let mut tok = Tokenizer::new(bpe);
            tok.with_pre_tokenizer(Some(pre_tokenizer(pre.kind)?));
            tok.with_decoder(Some(ByteLevel::new(false, true, true)));
            tok
        }
        Model::Spm { add_space_prefix } => {
            let mut builder = BPE::builder()
                .vocab_and_merges(hf_vocab, spm_merges(vocab))
                .byte_fallback(true)
                .fuse_unk(true);
            if let Some(unk) = (0..vocab.tokens.len()).find(|&i| vocab.types[i] == TYPE_UNKNOWN) {
                builder = builder.unk_token(vocab.tokens[unk].clone());
            }
            let bpe = builder
                .build()
                .map_err(|e| anyhow!("cannot build the BPE model for tokenizer.json: {e}"))?;
            let mut tok = Tokenizer::new(bpe);
            let escape = Replace::new(" ", "▁").map_err(|e| anyhow!("{e}"))?;
            let normalizer: NormalizerWrapper = if *add_space_prefix {
                NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), escape.into()]).into()
            } else {
                escape.into()
            };
            tok.with_normalizer(Some(normalizer));
            let mut decoders: Vec<DecoderWrapper> = vec![
                Replace::new("▁", " ").map_err(|e| anyhow!("{e}"))?.into(),
                ByteFallback::new().into(),
                Fuse::new().into(),
            ];
            if *add_space_prefix {
                decoders.push(Strip::new(' ', 1, 0).into());
            }
            tok.with_decoder(Some(DecoderSequence::new(decoders)));
            tok
        }
    };
    // Matched in the raw text (not normalized), as llama.cpp cuts them out before tokenizing.
    let added: Vec<AddedToken> = vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .filter_map(|(t, &ty)| match ty {
            TYPE_CONTROL | TYPE_UNKNOWN => Some(AddedToken::from(t.clone(), true)),
            TYPE_USER_DEFINED => Some(AddedToken::from(t.clone(), false).normalized(false)),
            _ => None,
        })
        .collect();
    tok.add_special_tokens(&added);
    tok.to_string(true)
        .map_err(|e| anyhow!("cannot serialize tokenizer.json: {e}"))
}

/// Merges equivalent to SentencePiece's score-driven merging (transformers'
/// `SentencePieceExtractor`): for every token, each split into two tokens, ordered by the
/// token's score, best first, then by the ids of the two halves.
fn spm_merges(vocab: &Vocab) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize)> = Vec::new();
    for (i, token) in vocab.tokens.iter().enumerate() {
        let start = merges.len();
        for (cut, _) in token.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&token[..cut]), ids.get(&token[cut..])) {
                merges.push((vocab.scores[i], l, r));
            }
        }
        merges[start..].sort_by_key(|&(_, l, r)| (l, r));
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges
        .into_iter()
        .map(|(_, l, r)| (vocab.tokens[l].clone(), vocab.tokens[r].clone()))
        .collect()
}

/// Hugging Face pre-tokenizers splitting as llama.cpp's [`PreKind`] does.
fn pre_tokenizer(kind: PreKind) -> Result<PreTokenizerWrapper> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("bad pre-tokenizer regex {re:?}: {e}"))?
        .into())
    };
    let bytes = || -> PreTokenizerWrapper { ByteLevel::new(false, true, false).into() };
    Ok(match kind {
        PreKind::Gpt2 => ByteLevel::new(false, true, true).into(),
        PreKind::Smollm => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into(),
        PreKind::Llama3 => Sequence::new(vec![split(LLAMA3)?, bytes()]).into(),
        PreKind::Qwen2 => Sequence::new(vec![split(QWEN2)?, bytes()]).into(),
        PreKind::DeepseekLlm => Sequence::new(vec![
            split(r"[\r\n]")?,
            split(&format!(r"\s?[{DEEPSEEK_LETTERS}]+"))?,
            split(&format!(r"\s?[{DEEPSEEK_PUNCT}]+"))?,
            split(r"\s+$")?,
            split(&format!("[{DEEPSEEK_CJK}]+"))?,
            split(r"\p{N}+")?,
            bytes(),
        ])
        .into(),
        PreKind::Default => Sequence::new(vec![
            split(r"[\p{P}\$\+<=>\^~\|]+")?,
            split(GPT2)?,
            split(r"\p{N}+")?,
            split("[0-9][0-9][0-9]")?,
            bytes(),
        ])
        .into(),
    })
}
