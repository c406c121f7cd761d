//! The record `cai revise` writes per prompt (SL-CAI's critique → revision rounds, Bai et al.
//! 2022 §3.1): plain data at the bottom, read by the SFT and DPO data and the pipeline report
//! as well as written by the revise stage, so none of them imports another stage for it.

use serde::{Deserialize, Serialize};

use crate::chat::ChatMessage;

/// One critique → revision round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub principle: String,
    pub critique: String,
    pub revision: String,
}

/// The output record of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub id: String,
    pub prompt: String,
    pub conversation: Vec<ChatMessage>,
    pub initial: String,
    pub rounds: Vec<Round>,
    /// The last non-empty revision (the initial answer if none).
    #[serde(rename = "final")]
    pub final_response: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}
