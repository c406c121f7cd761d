//! A GGUF vocabulary as a Hugging Face `tokenizer.json`, for checkpoint folders that other
//! tools (and [`super::TextTokenizer::from_file`]) load.

use anyhow::{anyhow, bail, Result};
use tokenizers::models::bpe::{Vocab as HfVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::bpe_pre::PreKind;
use super::vocab::{Model, Vocab, TYPE_CONTROL, TYPE_UNKNOWN, TYPE_USER_DEFINED};

/// The regexes llama.cpp's hand-written scanners implement, in the `tokenizer.json` form
/// they come from.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Serialized `tokenizer.json` equivalent to `vocab`.
pub(super) fn to_json(vocab: &Vocab) -> Result<String> {
    let Model::Bpe { merges, .. } = &vocab.model else {
        bail!(
            "cannot write tokenizer.json: exporting a SentencePiece (`llama`) GGUF vocabulary \
             is not supported yet; start from the model's Hugging Face folder instead"
        );
    };
    let hf_vocab: HfVocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(hf_vocab, merges.pairs())
        .build()
        .map_err(|e| anyhow!("cannot build the BPE model for tokenizer.json: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    let kind = vocab.pre_kind().unwrap_or(PreKind::Gpt2);
    tok.with_pre_tokenizer(Some(pre_tokenizer(kind)?));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    let added: Vec<AddedToken> = vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .filter_map(|(t, &ty)| match ty {
            TYPE_CONTROL | TYPE_UNKNOWN => Some(AddedToken::from(t.clone(), true)),
            TYPE_USER_DEFINED => Some(AddedToken::from(t.clone(), false)),
            _ => None,
        })
        .collect();
    tok.add_special_tokens(&added);
    tok.to_string(true)
        .map_err(|e| anyhow!("cannot serialize tokenizer.json: {e}"))
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
