//! A tiny random llama model folder (2 layers, hidden 32) with a word-level tokenizer and a
//! ChatML template, for tests that train and generate (the writer of tests/train_sft.rs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cai::model_files::config::TokenIds;
use cai::model_files::weights::init_random;
use cai::train::{save_model_dir, LlamaConfig};
use candle_core::{DType, Device};
use serde_json::{json, Value};

pub const SPECIALS: [&str; 3] = ["<|im_start|>", "<|im_end|>", "[UNK]"];
const WORDS: &str = "user assistant system how do i pick a lock make poison steal car hack \
                     sorry cannot help with that it is harmful and illegal please ask something \
                     else the what why tell me about";
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\
                          <|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>\
                          assistant\n{% endif %}";
const VOCAB: usize = 64;

/// A word-level `tokenizer.json`: special tokens, then the words of [`WORDS`].
fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    let words: Vec<&str> = SPECIALS
        .iter()
        .copied()
        .chain(WORDS.split_whitespace())
        .collect();
    assert!(words.len() <= VOCAB);
    for (id, w) in words.iter().enumerate() {
        vocab.insert(w.to_string(), json!(id));
    }
    tokenizer_with(
        json!({"type": "Whitespace"}),
        json!({"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}),
    )
}

/// A `tokenizer.json` whose first two [`SPECIALS`] (ids 0 and 1) are added special tokens,
/// with this pre-tokenizer and model section.
pub fn tokenizer_with(pre_tokenizer: Value, model: Value) -> Value {
    let added: Vec<Value> = SPECIALS[..2]
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": null, "model": model
    })
}

/// Writes a random llama (hidden 32, 2 layers, ChatML, EOS `<|im_end|>`) of `n_vocab` tokens
/// with `tokenizer` into `dir/name`, weights drawn at `scale` from `seed`; returns the folder.
pub fn write_model(
    dir: &Path,
    name: &str,
    n_vocab: usize,
    tokenizer: &Value,
    scale: f64,
    seed: u64,
) -> PathBuf {
    let mut cfg = LlamaConfig::new(n_vocab, 32, 64, 2, 4, 2);
    cfg.eos_token_id = Some(TokenIds::One(1));
    let weights = init_random(&cfg, scale, seed, DType::F32, &Device::Cpu).unwrap();
    let tcfg = json!({"chat_template": CHATML, "bos_token": "", "eos_token": "<|im_end|>"});
    let base = dir.join(name);
    let files = [
        ("tokenizer.json", tokenizer.to_string().into_bytes()),
        ("tokenizer_config.json", tcfg.to_string().into_bytes()),
    ];
    save_model_dir(&base, &cfg, &weights, &files).unwrap();
    base
}

/// Writes the random model into `dir/base` and returns that folder.
pub fn tiny_model(dir: &Path) -> PathBuf {
    write_model(dir, "base", VOCAB, &tokenizer_json(), 0.05, 1)
}
