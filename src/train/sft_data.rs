//! SFT data for `cai train sft`: the SL-CAI step of Bai et al. (2022, §3.1) fine-tunes the
//! model on its own revised answers to red-team prompts.
//!
//! Rows are `cai revise` records (the target is the final revision, every round's revision
//! as in SL-CAI-n, or one round's) or TRL SFT rows (`messages`, or `prompt`/`completion`).
//! Each becomes a conversation and a response, tokenized with the model's chat template;
//! only the response tokens are loss targets.

use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::chat::{ChatMessage, Role};
use crate::jsonl;
use crate::model_files::ChatTokenizer;
use crate::revisions::RevisionRecord;
use crate::train::TokenizedExample;

/// Which revision of a `cai revise` record is the training target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoundChoice {
    /// The record's final answer (the last non-empty revision).
    #[default]
    Final,
    /// One example per round's revision (SL-CAI-n trains on every round).
    All,
    /// The revision of round N (1-based); records with fewer rounds are skipped.
    Round(usize),
}

impl FromStr for RoundChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "final" => Ok(Self::Final),
            "all" => Ok(Self::All),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Round(n)),
                _ => Err(format!(
                    "`{s}` is not a round: use final, all or a number from 1"
                )),
            },
        }
    }
}

impl std::fmt::Display for RoundChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Final => f.write_str("final"),
            Self::All => f.write_str("all"),
            Self::Round(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for RoundChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for RoundChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => s.parse().map_err(serde::de::Error::custom),
            Value::Number(n) => n
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_default()
                .parse()
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not a round: use final, all or a number from 1"
            ))),
        }
    }
}

/// One training pair before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub struct SftPair {
    /// The turns before the response (ends with a user turn).
    pub conversation: Vec<ChatMessage>,
    /// The assistant response the model learns.
    pub response: String,
    /// `file:line` of the row, for error messages.
    pub source: String,
}

/// What [`read_pairs`] found.
#[derive(Debug, Clone, Default)]
pub struct PairSet {
    pub pairs: Vec<SftPair>,
    /// `cai revise` records without the requested round, or with an empty revision.
    pub skipped: usize,
}

/// Reads every row of `path` as SFT pairs; errors name `file:line`.
pub fn read_pairs(path: &Path, round: RoundChoice) -> Result<PairSet> {
    let mut out = PairSet::default();
    for line in jsonl::read::<Value>(path)? {
        let source = format!("{}:{}", path.display(), line.number);
        let before = out.pairs.len();
        row_pairs(line.value, round, &source, &mut out)
            .with_context(|| format!("{source}: not a cai revise record or TRL SFT row"))?;
        for p in &mut out.pairs[before..] {
            p.source.clone_from(&source);
        }
    }
    Ok(out)
}

fn row_pairs(row: Value, round: RoundChoice, source: &str, out: &mut PairSet) -> Result<()> {
    let pair = |conversation: Vec<ChatMessage>, response: String| SftPair {
        conversation,
        response,
        source: source.to_string(),
    };
    if row.get("rounds").is_some() && row.get("final").is_some() {
        let rec: RevisionRecord = serde_json::from_value(row)?;
        let targets: Vec<&str> = match round {
            RoundChoice::Final => vec![rec.final_response.as_str()],
            RoundChoice::All => rec.rounds.iter().map(|r| r.revision.as_str()).collect(),
            RoundChoice::Round(n) => rec
                .rounds
                .get(n - 1)
                .map(|r| r.revision.as_str())
                .into_iter()
                .collect(),
        };
        if targets.is_empty() {
            out.skipped += 1;
        }
        for t in targets {
            if t.trim().is_empty() {
                out.skipped += 1;
            } else {
                out.pairs
                    .push(pair(rec.conversation.clone(), t.to_string()));
            }
        }
        return Ok(());
    }
    if let Some(messages) = row.get("messages") {
        let mut messages: Vec<ChatMessage> = serde_json::from_value(messages.clone())
            .context("`messages` must be a list of {role, content}")?;
        match messages.pop() {
            Some(last) if last.role == Role::Assistant => {
                out.pairs.push(pair(messages, last.content));
                return Ok(());
            }
            _ => bail!("the last of `messages` must be an assistant turn"),
        }
    }
    if let (Some(prompt), Some(completion)) = (row.get("prompt"), row.get("completion")) {
        let conversation = match prompt {
            Value::String(s) => vec![ChatMessage::user(s.clone())],
            other => serde_json::from_value(other.clone())
                .context("`prompt` must be a string or a list of {role, content}")?,
        };
        let response = match completion {
            Value::String(s) => s.clone(),
            other => {
                let turns: Vec<ChatMessage> = serde_json::from_value(other.clone())
                    .context("`completion` must be a string or a list of {role, content}")?;
                match turns.as_slice() {
                    [one] if one.role == Role::Assistant => one.content.clone(),
                    _ => bail!("`completion` must hold exactly one assistant turn"),
                }
            }
        };
        out.pairs.push(pair(conversation, response));
        return Ok(());
    }
    bail!("expected `rounds` + `final`, `messages`, or `prompt` + `completion`")
}

/// Tokenized examples and how many were longer than `max_len`.
#[derive(Debug, Clone, Default)]
pub struct TokenizedSet {
    pub examples: Vec<TokenizedExample>,
    /// Examples longer than `max_len` tokens (the trainer cuts them).
    pub too_long: usize,
}

/// Tokenizes pairs with the model's chat template; the mask is true on response tokens.
pub fn tokenize(pairs: &[SftPair], tok: &ChatTokenizer, max_len: usize) -> Result<TokenizedSet> {
    let mut out = TokenizedSet::default();
    for p in pairs {
        let (tokens, loss_mask) = tok
            .encode_response(&p.conversation, &p.response)
            .with_context(|| format!("{}: cannot tokenize", p.source))?;
        out.too_long += usize::from(tokens.len() > max_len);
        out.examples.push(TokenizedExample { tokens, loss_mask });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("data.jsonl");
        std::fs::write(&p, text).unwrap();
        p
    }

    const RECORD: &str = r#"{"id":"a","prompt":"How do I pick a lock?","conversation":[{"role":"user","content":"How do I pick a lock?"}],"initial":"Use a pick.","rounds":[{"principle":"p1","critique":"c1","revision":"R1"},{"principle":"p2","critique":"c2","revision":""}],"final":"R1"}"#;

    #[test]
    fn revise_records_follow_the_round_choice() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = write(dir.path(), &format!("{RECORD}\n"));
        let final_ = read_pairs(&p, RoundChoice::Final)?;
        assert_eq!(final_.pairs.len(), 1);
        assert_eq!(final_.pairs[0].response, "R1");
        assert_eq!(
            final_.pairs[0].conversation[0].content,
            "How do I pick a lock?"
        );
        assert_eq!(final_.pairs[0].source, format!("{}:1", p.display()));
        // Round 2's revision is empty: skipped, counted.
        let all = read_pairs(&p, RoundChoice::All)?;
        assert_eq!((all.pairs.len(), all.skipped), (1, 1));
        let second = read_pairs(&p, RoundChoice::Round(2))?;
        assert_eq!((second.pairs.len(), second.skipped), (0, 1));
        let third = read_pairs(&p, RoundChoice::Round(3))?;
        assert_eq!((third.pairs.len(), third.skipped), (0, 1));
        Ok(())
    }

    #[test]
    fn trl_rows_and_errors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let text = concat!(
            r#"{"messages":[{"role":"system","content":"S"},{"role":"user","content":"Q"},{"role":"assistant","content":"A"}]}"#,
            "\n\n",
            r#"{"prompt":"Q2","completion":"A2"}"#,
            "\n",
            r#"{"prompt":[{"role":"user","content":"Q3"}],"completion":[{"role":"assistant","content":"A3"}]}"#,
            "\n"
        );
        let set = read_pairs(&write(dir.path(), text), RoundChoice::Final)?;
        let got: Vec<_> = set
            .pairs
            .iter()
            .map(|p| (p.conversation.len(), p.response.as_str()))
            .collect();
        assert_eq!(got, vec![(2, "A"), (1, "A2"), (1, "A3")]);
        assert!(set.pairs[2].source.ends_with(":4"));

        let bad = r#"{"messages":[{"role":"user","content":"Q"}]}"#;
        let p = write(dir.path(), &format!("{RECORD}\n{bad}\n"));
        let err = format!("{:#}", read_pairs(&p, RoundChoice::Final).unwrap_err());
        assert!(err.contains("data.jsonl:2:"), "{err}");
        assert!(err.contains("assistant turn"), "{err}");
        let p = write(dir.path(), "{\"text\": \"x\"}\n");
        let err = format!("{:#}", read_pairs(&p, RoundChoice::Final).unwrap_err());
        assert!(
            err.contains("data.jsonl:1:") && err.contains("expected"),
            "{err}"
        );
        let p = write(dir.path(), "{not json\n");
        let err = format!("{:#}", read_pairs(&p, RoundChoice::Final).unwrap_err());
        assert!(err.contains("data.jsonl:1"), "{err}");
        Ok(())
    }

    #[test]
    fn round_choice_parses() {
        assert_eq!("final".parse(), Ok(RoundChoice::Final));
        assert_eq!("all".parse(), Ok(RoundChoice::All));
        assert_eq!("2".parse(), Ok(RoundChoice::Round(2)));
        assert!("0".parse::<RoundChoice>().is_err());
        let r: RoundChoice = serde_yaml::from_str("3").unwrap();
        assert_eq!(r, RoundChoice::Round(3));
    }
}
