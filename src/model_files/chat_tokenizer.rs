//! A model's tokenizer and chat template, loaded without its weights: what training data
//! preparation (SFT, reward model) and the local backend share.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use serde_json::Value;

use super::chat_template::ChatTemplate;
use super::locate::ModelSpec;
use super::tokenizer::TextTokenizer;
use crate::chat::Prompt;
use crate::chat::{ChatMessage, Role};

/// Tokenizer + chat template + context length of one model.
pub struct ChatTokenizer {
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
    pub context: usize,
}

impl ChatTokenizer {
    /// From the user's `--model` value (`default`, a GGUF file, a model folder, an HF id).
    pub fn open(model: &str) -> Result<Self> {
        match ModelSpec::resolve(model)? {
            ModelSpec::GgufFile(p) => Self::from_gguf_file(&p),
            ModelSpec::Folder(d) => Self::from_folder(&d),
        }
    }

    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        let (_, content) = super::gguf_check::open(path)?;
        Self::from_gguf(&content, path)
    }

    /// From GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let tokenizer = TextTokenizer::from_gguf(content, path)?;
        let md = &content.metadata;
        let template_src = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned());
        let token_text = |key: &str| {
            md.get(key)
                .and_then(|v| v.to_u32().ok())
                .and_then(|id| tokenizer.decode(&[id]).ok())
                .unwrap_or_default()
        };
        let template = ChatTemplate::new(
            template_src,
            &token_text("tokenizer.ggml.bos_token_id"),
            &token_text("tokenizer.ggml.eos_token_id"),
            &path.display().to_string(),
        )
        .with_context(|| format!("{}: bad chat template", path.display()))?;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        let context = md
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(2048) as usize;
        Ok(Self {
            tokenizer,
            template,
            context,
        })
    }

    /// From a Hugging Face style folder: `tokenizer.json`, `tokenizer_config.json` (chat
    /// template, special tokens) and `config.json` (end tokens, context length).
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let read_json = |name: &str| -> Result<Option<Value>> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{}: malformed JSON", p.display())
            })?))
        };
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            bail!("{}: no tokenizer.json in this model folder", dir.display());
        }
        let config = read_json(crate::artifacts::CONFIG_FILE)?.unwrap_or(Value::Null);
        let tcfg = read_json("tokenizer_config.json")?.unwrap_or(Value::Null);
        let ids = |v: &Value| -> Vec<u32> {
            match v {
                Value::Number(n) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .map(|n| n as u32)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let eos = ids(&config["eos_token_id"]);
        let bos = ids(&config["bos_token_id"]).first().copied();
        let add_bos = tcfg["add_bos_token"].as_bool().unwrap_or(false);
        let tokenizer =
            TextTokenizer::from_file(&tok_path, &eos, if add_bos { bos } else { None })?;
        let token_str = |key: &str| match &tcfg[key] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        };
        let template = ChatTemplate::new(
            tcfg["chat_template"].as_str().map(str::to_string),
            &token_str("bos_token"),
            &token_str("eos_token"),
            &dir.join("tokenizer_config.json").display().to_string(),
        )
        .with_context(|| {
            format!(
                "{}: bad chat template",
                dir.join("tokenizer_config.json").display()
            )
        })?;
        let context = config["max_position_embeddings"].as_u64().unwrap_or(2048) as usize;
        Ok(Self {
            tokenizer,
            template,
            context,
        })
    }

    /// `tokenizer.json` and `tokenizer_config.json` (chat template, bos/eos token texts) for
    /// a model folder, so that [`ChatTokenizer::from_folder`] reads this tokenizer back.
    pub fn folder_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let (bos, eos) = self.template.special_tokens();
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": self.template.source(),
            "bos_token": bos,
            "eos_token": eos,
            "add_bos_token": self.tokenizer.bos_id.is_some(),
            "model_max_length": self.context,
        });
        Ok(vec![
            ("tokenizer.json", self.tokenizer.to_json()?.into_bytes()),
            ("tokenizer_config.json", serde_json::to_vec_pretty(&config)?),
        ])
    }

    /// The exact text fed to the model for `prompt` (special-token literals in user text
    /// neutralized, so they cannot pose as turn markers).
    pub fn prompt_text(&self, prompt: &Prompt) -> Result<String> {
        let messages: Vec<_> = prompt
            .messages
            .iter()
            .map(|m| ChatMessage::new(m.role, self.tokenizer.neutralize(&m.content)))
            .collect();
        let mut text = self.template.render(&messages)?;
        text.push_str(&self.tokenizer.neutralize(&prompt.prefill));
        Ok(text)
    }

    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.prompt_text(prompt)?)
    }

    /// Token ids of `conversation` followed by the assistant's `response` as the chat
    /// template closes it in training data, and a mask that is true on the response tokens
    /// (end-of-turn marker included: the model must learn to stop).
    pub fn encode_response(
        &self,
        conversation: &[ChatMessage],
        response: &str,
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        let clean =
            |m: &ChatMessage| ChatMessage::new(m.role, self.tokenizer.neutralize(&m.content));
        let conv: Vec<ChatMessage> = conversation.iter().map(clean).collect();
        if conv.last().is_some_and(|m| m.role == Role::Assistant) {
            bail!("the conversation already ends with an assistant turn");
        }
        let prefix = self.template.render_with(&conv, true)?;
        let mut full_conv = conv;
        full_conv.push(ChatMessage::assistant(self.tokenizer.neutralize(response)));
        let mut full = self.template.render_with(&full_conv, false)?;
        if !full.starts_with(&prefix) {
            // Templates that render the last turn differently: fall back to prefix + text.
            full = format!("{prefix}{}", self.tokenizer.neutralize(response));
        }
        let prefix_ids = self.tokenizer.encode(&prefix)?;
        let mut ids = self.tokenizer.encode(&full)?;
        let start = prefix_ids
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        // Base models without a template: end the response with the end-of-text token.
        if !self.template.is_native() {
            ids.extend(self.tokenizer.stop_ids.first());
        }
        let mask = (0..ids.len()).map(|i| i >= start).collect();
        Ok((ids, mask))
    }
}
