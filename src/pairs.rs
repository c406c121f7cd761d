//! Preference pairs (a conversation plus two candidate responses) read from any supported format.
//!
//! Every row is converted at the border into a [`PreferencePair`], whatever its format; the format
//! is detected per line:
//!
//! * ours: `{"prompt": str}` or `{"conversation": [messages]}` plus `"response_a"`, `"response_b"`,
//!   optionally `"human": "a" | "b"` or `"human_p_a": 0.7`, and optionally `"id"`;
//! * HH-RLHF: `{"chosen": transcript, "rejected": transcript}`, each a full
//!   `"\n\nHuman: ...\n\nAssistant: ..."` transcript, split at its last assistant turn;
//! * TRL preference: `{"prompt": str, "chosen": str, "rejected": str}`, the conversational form
//!   with message lists, and the implicit-prompt form `{"chosen": [..], "rejected": [..]}` whose
//!   prompt is the messages both lists share.
//!
//! For HH and TRL rows the chosen response lands in slot A for about half of the pairs (decided by
//! a hash of the content, so the same pair always lands the same way); a judge that prefers slot A
//! therefore cannot look good on these datasets by accident.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::chat::{parse_hh_transcript, ChatMessage, Role};
use crate::hash::{sha256, Sha256Parts};
use crate::jsonl::{self, Line};

/// The formats [`read_pairs`] accepts, for error messages.
const ACCEPTED_FORMATS: &str = "expected one of: ours {prompt|conversation, response_a, \
response_b[, human|human_p_a]}; HH-RLHF {chosen, rejected} transcripts; TRL {prompt, chosen, \
rejected} as strings or message lists; TRL implicit prompt {chosen, rejected} message lists";

/// Two candidate responses to one conversation, optionally with a human preference.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    /// The row's own `id` if it had one, else [`content_key`] of the pair (16 hex chars).
    pub id: String,
    /// Context before the two responses; normally ends with a user turn.
    pub conversation: Vec<ChatMessage>,
    pub response_a: String,
    pub response_b: String,
    /// Human probability that `response_a` is better (1.0 / 0.0 for a hard choice); `None` if the
    /// row carries no human label.
    pub human_p_a: Option<f64>,
    /// 1-based line of the row in its input file.
    pub source_line: usize,
}

/// Stable id of a pair's content: 16 hex chars of a SHA-256 over the conversation and the two
/// responses, independent of the order of `r1` and `r2`.
///
/// Each text is trimmed at both ends first, so a pair read from an HH transcript (whose turns are
/// trimmed) and from a TRL row (whose responses often start with a space) gets the same key.
pub fn content_key(conversation: &[ChatMessage], r1: &str, r2: &str) -> String {
    let mut h = Sha256Parts::new();
    h.u64(conversation.len() as u64);
    for m in conversation {
        h.part(m.role.as_str()).part(m.content.trim());
    }
    let (r1, r2) = (r1.trim(), r2.trim());
    let (lo, hi) = if r1 <= r2 { (r1, r2) } else { (r2, r1) };
    h.part(lo).part(hi);
    h.hex()[..16].to_string()
}

/// Reads every row of `path` as a preference pair; errors name `file:line`.
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>> {
    let lines = jsonl::read::<Value>(path)?;
    if lines.is_empty() {
        bail!("no pairs in {}", path.display());
    }
    lines
        .into_iter()
        .map(|line| {
            parse_row(line.value, line.number)
                .with_context(|| format!("{}:{}", path.display(), line.number))
        })
        .collect()
}

/// The union of the fields of every accepted format; unknown fields are ignored.
#[derive(Deserialize)]
struct RawRow {
    id: Option<String>,
    prompt: Option<Value>,
    conversation: Option<Vec<ChatMessage>>,
    response_a: Option<String>,
    response_b: Option<String>,
    human: Option<String>,
    human_p_a: Option<f64>,
    chosen: Option<Value>,
    rejected: Option<Value>,
}

fn parse_row(value: Value, source_line: usize) -> Result<PreferencePair> {
    if !value.is_object() {
        bail!("a row must be a JSON object; {ACCEPTED_FORMATS}");
    }
    let row: RawRow = serde_json::from_value(value)
        .with_context(|| format!("not a preference row; {ACCEPTED_FORMATS}"))?;
    if row.response_a.is_some() || row.response_b.is_some() {
        return parse_ours(row, source_line);
    }
    match (&row.chosen, &row.rejected) {
        (Some(chosen), Some(rejected)) => {
            let (conversation, chosen, rejected) =
                split_chosen_rejected(&row.prompt, chosen, rejected)?;
            Ok(assign_slots(conversation, chosen, rejected, source_line))
        }
        (Some(_), None) => bail!("row has \"chosen\" but no \"rejected\"; {ACCEPTED_FORMATS}"),
        (None, Some(_)) => bail!("row has \"rejected\" but no \"chosen\"; {ACCEPTED_FORMATS}"),
        (None, None) => bail!("unrecognised row; {ACCEPTED_FORMATS}"),
    }
}

fn parse_ours(row: RawRow, source_line: usize) -> Result<PreferencePair> {
    let conversation = match (row.conversation, &row.prompt) {
        (Some(_), Some(_)) => bail!("give either \"prompt\" or \"conversation\", not both"),
        (Some(conversation), None) => conversation,
        (None, Some(Value::String(prompt))) => vec![ChatMessage::user(prompt.as_str())],
        (None, Some(prompt)) => messages(prompt, "prompt")?,
        (None, None) => bail!("row has responses but no \"prompt\" or \"conversation\""),
    };
    let response_a = row
        .response_a
        .ok_or_else(|| anyhow!("missing \"response_a\""))?;
    let response_b = row
        .response_b
        .ok_or_else(|| anyhow!("missing \"response_b\""))?;
    let human_p_a = match (row.human.as_deref(), row.human_p_a) {
        (Some(_), Some(_)) => bail!("give either \"human\" or \"human_p_a\", not both"),
        (Some(h), None) if h.eq_ignore_ascii_case("a") => Some(1.0),
        (Some(h), None) if h.eq_ignore_ascii_case("b") => Some(0.0),
        (Some(h), None) => bail!("\"human\" must be \"a\" or \"b\", got {h:?}"),
        (None, Some(p)) if !(0.0..=1.0).contains(&p) => {
            bail!("\"human_p_a\" must be within [0, 1], got {p}")
        }
        (None, p) => p,
    };
    let id = match row.id {
        Some(id) => id,
        None => content_key(&conversation, &response_a, &response_b),
    };
    Ok(PreferencePair {
        id,
        conversation,
        response_a,
        response_b,
        human_p_a,
        source_line,
    })
}

/// Splits an HH or TRL row into (conversation, chosen response, rejected response).
fn split_chosen_rejected(
    prompt: &Option<Value>,
    chosen: &Value,
    rejected: &Value,
) -> Result<(Vec<ChatMessage>, String, String)> {
    match (prompt, chosen, rejected) {
        // HH-RLHF: two full transcripts.
        (None, Value::String(c), Value::String(r)) => {
            let (conversation, chosen) = split_last_assistant(parse_hh_transcript(c), "chosen")?;
            let (_, rejected) = split_last_assistant(parse_hh_transcript(r), "rejected")?;
            Ok((conversation, chosen, rejected))
        }
        // TRL standard: plain prompt and completions.
        (Some(Value::String(p)), Value::String(c), Value::String(r)) => {
            Ok((vec![ChatMessage::user(p.as_str())], c.clone(), r.clone()))
        }
        // TRL conversational with an explicit prompt.
        (Some(p @ Value::Array(_)), Value::Array(_), Value::Array(_)) => {
            let conversation = messages(p, "prompt")?;
            let chosen = join_contents(&messages(chosen, "chosen")?, "chosen")?;
            let rejected = join_contents(&messages(rejected, "rejected")?, "rejected")?;
            Ok((conversation, chosen, rejected))
        }
        // TRL conversational with an implicit prompt: the shared prefix of both lists.
        (None, Value::Array(_), Value::Array(_)) => {
            let c = messages(chosen, "chosen")?;
            let r = messages(rejected, "rejected")?;
            if c.is_empty() || r.is_empty() {
                bail!("\"chosen\" and \"rejected\" must not be empty lists");
            }
            // Keep at least one message on each side, even when the lists are identical.
            let max_shared = c.len().min(r.len()) - 1;
            let shared = c
                .iter()
                .zip(&r)
                .take_while(|(x, y)| x == y)
                .count()
                .min(max_shared);
            let chosen = join_contents(&c[shared..], "chosen")?;
            let rejected = join_contents(&r[shared..], "rejected")?;
            Ok((c[..shared].to_vec(), chosen, rejected))
        }
        _ => bail!(
            "\"prompt\", \"chosen\" and \"rejected\" have mismatched types; {ACCEPTED_FORMATS}"
        ),
    }
}

/// Splits a transcript at its last assistant turn: (messages before it, its content).
fn split_last_assistant(
    mut messages: Vec<ChatMessage>,
    field: &str,
) -> Result<(Vec<ChatMessage>, String)> {
    let last = messages
        .iter()
        .rposition(|m| m.role == Role::Assistant)
        .ok_or_else(|| anyhow!("\"{field}\" transcript has no \"Assistant:\" turn"))?;
    let response = messages.swap_remove(last).content;
    messages.truncate(last);
    Ok((messages, response))
}

/// Parses a JSON list of `{"role", "content"}` messages.
fn messages(value: &Value, field: &str) -> Result<Vec<ChatMessage>> {
    Vec::<ChatMessage>::deserialize(value)
        .with_context(|| format!("\"{field}\" is not a list of {{\"role\", \"content\"}} messages"))
}

/// The response text of a completion given as messages (several are joined by a blank line).
fn join_contents(messages: &[ChatMessage], field: &str) -> Result<String> {
    if messages.is_empty() {
        bail!("\"{field}\" has no response message");
    }
    let texts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    Ok(texts.join("\n\n"))
}

/// Builds the pair with the chosen response in slot A iff the first byte of
/// SHA-256(content key) is even.
fn assign_slots(
    conversation: Vec<ChatMessage>,
    chosen: String,
    rejected: String,
    source_line: usize,
) -> PreferencePair {
    let id = content_key(&conversation, &chosen, &rejected);
    let chosen_first = sha256(id.as_bytes())[0].is_multiple_of(2);
    let (response_a, response_b, p) = if chosen_first {
        (chosen, rejected, 1.0)
    } else {
        (rejected, chosen, 0.0)
    };
    PreferencePair {
        id,
        conversation,
        response_a,
        response_b,
        human_p_a: Some(p),
        source_line,
    }
}

/// One row of a label file written by `cai label` (unknown fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct AiLabel {
    #[serde(default)]
    pub id: Option<String>,
    pub conversation: Vec<ChatMessage>,
    pub response_a: String,
    pub response_b: String,
    /// Principles used for this pair (several for an ensemble).
    #[serde(default)]
    pub principles: Option<Vec<String>>,
    /// P(response_a better) with response_a shown in slot (A).
    #[serde(default)]
    pub p_a_first: Option<f64>,
    /// P(response_a better) with response_a shown in slot (B), mapped back to response_a.
    #[serde(default)]
    pub p_a_second: Option<f64>,
    /// `p_a_first` before calibration / CoT clamping: slot (A) was chosen iff it is above 0.5.
    /// `None` in older files and in modes without presentation orders.
    #[serde(default)]
    pub p_a_first_raw: Option<f64>,
    /// `p_a_second` before calibration / CoT clamping, mapped back to response_a like
    /// `p_a_second`: slot (A) (holding response_b) was chosen iff it is below 0.5.
    #[serde(default)]
    pub p_a_second_raw: Option<f64>,
    /// Final soft label P(response_a better); exactly 0.5 is a tie.
    pub p_a: f64,
    #[serde(default)]
    pub position_flip: Option<bool>,
    #[serde(default)]
    pub flags: Option<Vec<String>>,
    /// The pair was shortened by `--truncate-long` to be judged; the row keeps the original
    /// conversation (so it still joins to its human pair).
    #[serde(default)]
    pub truncated: bool,
}

/// Reads an AI label file; a probability outside [0, 1] is an error naming `file:line`.
pub fn read_ai_labels(path: &Path) -> Result<Vec<Line<AiLabel>>> {
    let rows = jsonl::read::<AiLabel>(path)?;
    for row in &rows {
        let r = &row.value;
        for (name, p) in [
            ("p_a", Some(r.p_a)),
            ("p_a_first", r.p_a_first),
            ("p_a_second", r.p_a_second),
            ("p_a_first_raw", r.p_a_first_raw),
            ("p_a_second_raw", r.p_a_second_raw),
        ] {
            if let Some(p) = p.filter(|p| !(0.0..=1.0).contains(p)) {
                bail!(
                    "{}:{}: {name} = {p} is not a probability in [0, 1]",
                    path.display(),
                    row.number
                );
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_str(text: &str) -> Result<Vec<PreferencePair>> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        read_pairs(f.path())
    }

    fn one(row: Value) -> PreferencePair {
        let mut pairs = read_str(&format!("{row}\n")).unwrap();
        assert_eq!(pairs.len(), 1);
        pairs.remove(0)
    }

    /// The a/b rule, restated independently of `assign_slots`.
    fn chosen_in_slot_a(conversation: &[ChatMessage], chosen: &str, rejected: &str) -> bool {
        let key = content_key(conversation, chosen, rejected);
        sha256(key.as_bytes())[0].is_multiple_of(2)
    }

    /// Checks that `pair` holds `chosen` and `rejected` in the slots the a/b rule prescribes.
    fn assert_slots(pair: &PreferencePair, chosen: &str, rejected: &str) {
        if chosen_in_slot_a(&pair.conversation, chosen, rejected) {
            assert_eq!(
                (pair.response_a.as_str(), pair.response_b.as_str()),
                (chosen, rejected)
            );
            assert_eq!(pair.human_p_a, Some(1.0));
        } else {
            assert_eq!(
                (pair.response_a.as_str(), pair.response_b.as_str()),
                (rejected, chosen)
            );
            assert_eq!(pair.human_p_a, Some(0.0));
        }
        assert_eq!(pair.id, content_key(&pair.conversation, chosen, rejected));
    }

    #[test]
    fn content_key_is_order_independent_and_content_sensitive() {
        let conv = [ChatMessage::user("hi")];
        let k = content_key(&conv, "x", "y");
        assert_eq!(k.len(), 16);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(k, content_key(&conv, "y", "x"));
        assert_eq!(k, content_key(&conv, " x", "y\n"), "ends are trimmed");
        assert_ne!(k, content_key(&conv, "x", "z"));
        assert_ne!(
            k,
            content_key(&[ChatMessage::assistant("hi")], "x", "y"),
            "role counts"
        );
        // Length prefixes keep field boundaries: "ab"+"c" differs from "a"+"bc".
        assert_ne!(content_key(&conv, "ab", "c"), content_key(&conv, "a", "bc"));
    }

    /// Pair ids live in users' files, so the one sha256 helper must keep them: computed in
    /// Python as `sha256(u64le(1) + f(b"user") + f(b"hi") + f(b"x") + f(b"y"))[:16 hex]` with
    /// `f(b) = u64le(len(b)) + b`, the bytes the original hand-written hasher fed.
    #[test]
    fn content_key_is_unchanged_by_the_sha256_helper() {
        let conv = [ChatMessage::user("hi")];
        assert_eq!(content_key(&conv, "x", "y"), "c64ccf3aa4436deb");
    }

    #[test]
    fn ours_with_prompt_and_hard_label() {
        let p = one(serde_json::json!({
            "prompt": "Q?", "response_a": "A1", "response_b": "B1", "human": "b"
        }));
        assert_eq!(p.conversation, vec![ChatMessage::user("Q?")]);
        assert_eq!((p.response_a.as_str(), p.response_b.as_str()), ("A1", "B1"));
        assert_eq!(p.human_p_a, Some(0.0));
        assert_eq!(p.id, content_key(&p.conversation, "A1", "B1"));
        assert_eq!(p.source_line, 1);
    }

    #[test]
    fn ours_with_conversation_soft_label_and_id() {
        let p = one(serde_json::json!({
            "id": "my-id",
            "conversation": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
            "response_a": "A", "response_b": "", "human_p_a": 0.7
        }));
        assert_eq!(p.id, "my-id");
        assert_eq!(
            p.conversation,
            vec![ChatMessage::system("S"), ChatMessage::user("U")]
        );
        assert_eq!(
            p.response_b, "",
            "empty responses are flagged later, not here"
        );
        assert_eq!(p.human_p_a, Some(0.7));
        let unlabeled =
            one(serde_json::json!({"prompt": "Q", "response_a": "A", "response_b": "B"}));
        assert_eq!(unlabeled.human_p_a, None);
    }

    #[test]
    fn hh_rows_split_at_last_assistant_turn() {
        let chosen =
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks";
        let rejected =
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away";
        let p = one(serde_json::json!({"chosen": chosen, "rejected": rejected}));
        assert_eq!(
            p.conversation,
            vec![
                ChatMessage::user("hi"),
                ChatMessage::assistant("hello"),
                ChatMessage::user("how are you?")
            ]
        );
        assert_slots(&p, "fine, thanks", "go away");
    }

    #[test]
    fn trl_standard_and_conversational_rows() {
        let p = one(
            serde_json::json!({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}),
        );
        assert_eq!(p.conversation, vec![ChatMessage::user("The sky is")]);
        assert_slots(&p, " blue.", " green.");

        let p = one(serde_json::json!({
            "prompt": [{"role": "user", "content": "What color is the sky?"}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "Green."}]
        }));
        assert_eq!(
            p.conversation,
            vec![ChatMessage::user("What color is the sky?")]
        );
        assert_slots(&p, "Blue.", "Green.");
    }

    #[test]
    fn trl_implicit_prompt_is_the_shared_prefix() {
        let p = one(serde_json::json!({
            "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]
        }));
        assert_eq!(p.conversation, vec![ChatMessage::user("Q")]);
        assert_slots(&p, "good", "bad");
        // Identical lists still leave one message on each side.
        let same = serde_json::json!([
            {"role": "user", "content": "Q"}, {"role": "assistant", "content": "x"}
        ]);
        let p = one(serde_json::json!({"chosen": same, "rejected": same}));
        assert_eq!(p.conversation, vec![ChatMessage::user("Q")]);
        assert_eq!((p.response_a.as_str(), p.response_b.as_str()), ("x", "x"));
    }

    #[test]
    fn ab_rule_puts_chosen_in_both_slots_across_rows() {
        // 40 distinct pairs: the chance that a fair hash bit is the same for all 40 is 2^-39.
        let rows: String = (0..40)
            .map(|i| {
                format!(
                    "{}\n",
                    serde_json::json!({"prompt": format!("q{i}"), "chosen": "c", "rejected": "r"})
                )
            })
            .collect();
        let pairs = read_str(&rows).unwrap();
        let in_a = pairs.iter().filter(|p| p.human_p_a == Some(1.0)).count();
        assert!(0 < in_a && in_a < 40, "chosen in slot A for {in_a} of 40");
        for (i, p) in pairs.iter().enumerate() {
            assert_slots(p, "c", "r");
            assert_eq!(p.source_line, i + 1);
        }
        // Reading again gives the same assignment.
        assert_eq!(read_str(&rows).unwrap(), pairs);
    }

    #[test]
    fn errors_name_file_line_and_formats() {
        let text = r#"{"prompt": "q", "response_a": "a", "response_b": "b"}
{"question": "q"}
"#;
        let err = format!("{:#}", read_str(text).unwrap_err());
        assert!(
            err.contains(":2: unrecognised row") && err.contains("HH-RLHF"),
            "{err}"
        );

        let err = format!(
            "{:#}",
            read_str("{\"prompt\": \"q\", \"response_a\": \"a\"}\n").unwrap_err()
        );
        assert!(err.contains(":1: missing \"response_b\""), "{err}");

        let err = format!("{:#}", read_str("[1, 2]\n").unwrap_err());
        assert!(err.contains(":1: a row must be a JSON object"), "{err}");

        let bad_p = r#"{"prompt": "q", "response_a": "a", "response_b": "b", "human_p_a": 1.5}"#;
        let err = format!("{:#}", read_str(bad_p).unwrap_err());
        assert!(err.contains("within [0, 1]"), "{err}");

        let no_assistant = "{\"chosen\": \"\\n\\nHuman: hi\", \"rejected\": \"\\n\\nHuman: hi\"}\n";
        let err = format!("{:#}", read_str(no_assistant).unwrap_err());
        assert!(err.contains("no \"Assistant:\" turn"), "{err}");

        let err = format!("{:#}", read_str("\n\n").unwrap_err());
        assert!(err.starts_with("no pairs in "), "{err}");
    }
}
