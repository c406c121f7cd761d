//! A trained reward model (Bai et al. 2022 §4.1) read on texts: what `cai score`, best-of-n
//! sampling, PPO's reward and `cai eval` share, so none of those stages imports another.

use std::path::Path;

use anyhow::{Context, Result};

use crate::chat::ChatMessage;
use crate::model_files::ChatTokenizer;
use crate::train::reward::RewardModel;

/// A reward model that scores (conversation, response) texts: the model folder, its
/// tokenizer (its own `tokenizer.json`, else its base model's) and the longest sequence read
/// (the end of a longer one is kept: that is where the reward is read).
pub struct TextRewardModel {
    rm: RewardModel,
    tok: ChatTokenizer,
    max_len: usize,
}

impl TextRewardModel {
    pub fn open(dir: &Path, max_len: usize) -> Result<Self> {
        let rm = RewardModel::load(dir, &crate::device::compute_device()?)
            .with_context(|| format!("loading the reward model {}", dir.display()))?;
        let tok = if dir.join("tokenizer.json").is_file() {
            ChatTokenizer::from_folder(dir)?
        } else {
            ChatTokenizer::open(&rm.info.base_model)
                .with_context(|| format!("opening the base model {}", rm.info.base_model))?
        };
        Ok(Self { rm, tok, max_len })
    }

    /// Rewards of `(conversation, response)` items, `batch_size` sequences at a time.
    pub fn score(&self, items: &[(&[ChatMessage], &str)], batch_size: usize) -> Result<Vec<f64>> {
        let mut seqs = Vec::with_capacity(items.len());
        for (i, (conversation, response)) in items.iter().enumerate() {
            let (mut ids, _) = self
                .tok
                .encode_response(conversation, response)
                .with_context(|| format!("item {}", i + 1))?;
            if ids.len() > self.max_len {
                ids.drain(..ids.len() - self.max_len);
            }
            seqs.push(ids);
        }
        self.rm.score(&seqs, batch_size)
    }
}
