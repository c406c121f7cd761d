//! Conversations as the pipeline sees them: an ordered list of role-tagged messages.
//!
//! Every input format (our JSONL, HH-RLHF transcripts, TRL rows) is converted to these types at
//! the border, so the stages never deal with format quirks.

use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// Splits an HH-RLHF transcript ("\n\nHuman: ...\n\nAssistant: ...") into messages.
///
/// Text before the first speaker tag is ignored; each message's content is trimmed.
pub fn parse_hh_transcript(text: &str) -> Vec<ChatMessage> {
    const HUMAN: &str = "\n\nHuman:";
    const ASSISTANT: &str = "\n\nAssistant:";
    let text = if text.starts_with("Human:") || text.starts_with("Assistant:") {
        // Some dumps drop the leading blank lines.
        std::borrow::Cow::Owned(format!("\n\n{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    let mut tags: Vec<(usize, Role, usize)> = Vec::new();
    for (tag, role) in [(HUMAN, Role::User), (ASSISTANT, Role::Assistant)] {
        tags.extend(text.match_indices(tag).map(|(i, _)| (i, role, tag.len())));
    }
    tags.sort_by_key(|t| t.0);
    let mut messages = Vec::with_capacity(tags.len());
    for (k, &(start, role, len)) in tags.iter().enumerate() {
        let end = tags.get(k + 1).map_or(text.len(), |t| t.0);
        messages.push(ChatMessage::new(role, text[start + len..end].trim()));
    }
    messages
}

/// A prompt: the conversation so far, plus optional text the assistant's reply starts with.
///
/// `prefill` is rendered after the generation prompt of the chat template, so the model
/// continues it (e.g. "The answer is (" before scoring the options "A" and "B").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prompt {
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefill: String,
}

impl Prompt {
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            prefill: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hh_transcript_splits_turns() {
        let t = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: bye\n\nAssistant:  ok ";
        let m = parse_hh_transcript(t);
        assert_eq!(
            m,
            vec![
                ChatMessage::user("hi there"),
                ChatMessage::assistant("hello!"),
                ChatMessage::user("bye"),
                ChatMessage::assistant("ok"),
            ]
        );
    }

    #[test]
    fn hh_transcript_without_leading_newlines() {
        let m = parse_hh_transcript("Human: a\n\nAssistant: b");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1], ChatMessage::assistant("b"));
    }
}
