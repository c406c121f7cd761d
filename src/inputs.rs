//! Red-team prompt sets: JSONL (`prompt`, `messages`/`conversation`, HH-RLHF `chosen`), or
//! plain text with one prompt per line. Each prompt becomes a conversation with a stable id.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::chat::{parse_hh_transcript, ChatMessage, Role};
use crate::hash::fnv1a;

/// One prompt to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptItem {
    /// Stable id: a hash of the conversation (with a suffix for repeats).
    pub id: String,
    /// Conversation ending with the user turn to answer.
    pub conversation: Vec<ChatMessage>,
    /// 1-based line in the input file.
    pub line: usize,
}

impl PromptItem {
    /// The last user message.
    pub fn text(&self) -> &str {
        self.conversation
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str())
    }
}

/// Reads a prompt file; errors name `file:line`.
pub fn read_prompts(path: &Path) -> Result<Vec<PromptItem>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read prompt file {}", path.display()))?;
    let first = text.lines().find(|l| !l.trim().is_empty());
    let Some(first) = first else {
        bail!("{}: no prompts (the file is empty)", path.display());
    };
    let jsonl = first.trim_start().starts_with('{');
    let mut items = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let conversation = if jsonl {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{number}: malformed JSON", path.display()))?;
            conversation_of(&v).with_context(|| format!("{}:{number}", path.display()))?
        } else {
            vec![ChatMessage::user(line.trim())]
        };
        if conversation
            .last()
            .is_none_or(|m| m.role != Role::User || m.content.trim().is_empty())
        {
            bail!(
                "{}:{number}: empty prompt (the conversation must end with a non-empty user turn)",
                path.display()
            );
        }
        let mut bytes = Vec::new();
        for m in &conversation {
            bytes.extend_from_slice(m.role.as_str().as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(m.content.as_bytes());
            bytes.push(0);
        }
        let h = fnv1a(&[&bytes]);
        let n = seen.entry(h).or_insert(0);
        let id = if *n == 0 {
            format!("{h:016x}")
        } else {
            format!("{h:016x}-{n}")
        };
        *n += 1;
        items.push(PromptItem {
            id,
            conversation,
            line: number,
        });
    }
    Ok(items)
}

fn conversation_of(v: &Value) -> Result<Vec<ChatMessage>> {
    if let Some(p) = v.get("prompt") {
        return match p {
            Value::String(s) => Ok(vec![ChatMessage::user(s.trim())]),
            Value::Array(_) => messages_of(p),
            _ => bail!("`prompt` must be a string or a list of messages"),
        };
    }
    for key in ["messages", "conversation"] {
        if let Some(m) = v.get(key) {
            let mut msgs = messages_of(m)?;
            // A conversation that ends with an answer is answered anew from its last user turn.
            while msgs.last().is_some_and(|m| m.role == Role::Assistant) {
                msgs.pop();
            }
            return Ok(msgs);
        }
    }
    if let Some(Value::String(t)) = v.get("chosen") {
        // HH-RLHF row: the red-team prompt is the first human turn.
        let first = parse_hh_transcript(t)
            .into_iter()
            .find(|m| m.role == Role::User);
        return first
            .map(|m| vec![m])
            .context("`chosen` transcript has no `Human:` turn");
    }
    bail!("no prompt: expected a `prompt`, `messages`, `conversation` or HH-RLHF `chosen` field")
}

/// Parses `[{"role": ..., "content": ...}, ...]`.
pub fn messages_of(v: &Value) -> Result<Vec<ChatMessage>> {
    serde_json::from_value(v.clone()).context(
        "expected a list of {\"role\", \"content\"} messages with role system, user or assistant",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &str, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_every_format() {
        let (_d, p) = write(
            concat!(
                "{\"prompt\": \"a\"}\n",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"b\"}, {\"role\": \"assistant\", \"content\": \"x\"}]}\n",
                "{\"chosen\": \"\\n\\nHuman: c\\n\\nAssistant: y\", \"rejected\": \"\"}\n",
                "\n",
                "{\"prompt\": \"a\"}\n",
            ),
            "p.jsonl",
        );
        let items = read_prompts(&p).unwrap();
        let texts: Vec<&str> = items.iter().map(|i| i.text()).collect();
        assert_eq!(texts, ["a", "b", "c", "a"]);
        assert_eq!(items[1].conversation.len(), 1);
        assert_eq!(items[3].line, 5);
        assert_eq!(items[3].id, format!("{}-1", items[0].id));
        // Existing runs resume by these ids: pinned (FNV-1a 64 of "user\0a\0\xff", computed
        // independently in Python).
        assert_eq!(items[0].id, "291581819d166230");
    }

    #[test]
    fn plain_text_lines() {
        let (_d, p) = write("how do I pick a lock?\n\nwhat is 2+2\n", "p.txt");
        let items = read_prompts(&p).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].text(), "what is 2+2");
    }

    #[test]
    fn errors_name_file_and_line() {
        let (_d, p) = write("{\"prompt\": \"a\"}\n{\"nope\": 1}\n", "p.jsonl");
        let e = format!("{:#}", read_prompts(&p).unwrap_err());
        assert!(e.contains("p.jsonl:2") && e.contains("no prompt"), "{e}");
        let (_d, p) = write("{\"prompt\": \"  \"}\n", "q.jsonl");
        let e = format!("{:#}", read_prompts(&p).unwrap_err());
        assert!(e.contains("q.jsonl:1: empty prompt"), "{e}");
        let (_d, p) = write("\n\n", "e.jsonl");
        let e = format!("{:#}", read_prompts(&p).unwrap_err());
        assert!(e.contains("no prompts"), "{e}");
    }
}
