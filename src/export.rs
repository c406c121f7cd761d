//! `cai export`: our stage outputs as training sets for TRL and OpenRLHF.
//!
//! - SFT (from `cai revise` records): conversational `{"messages": [...]}` rows, or
//!   prompt/completion rows (`prompt` = the conversation, `completion` = the final revision).
//! - Preference (from `cai label` rows with `conversation`, `response_a`, `response_b`, `p_a`):
//!   `prompt`/`chosen`/`rejected`, chosen = the response the AI feedback prefers, with the soft
//!   label kept as `p_chosen` (RLAIF's distilled soft labels, Lee et al. 2023 §2.1) for trainers
//!   that use it. A tie (`p_a` = 0.5 exactly) prefers neither response, so it is skipped and
//!   counted unless `keep_ties` asks for it (written with `p_chosen` 0.5, response A as
//!   "chosen" only by position).
//!
//! `conversational` style keeps role-tagged messages (TRL's conversational formats; OpenRLHF
//! with `--apply_chat_template`); `standard` writes plain text, the conversation as an
//! HH-RLHF transcript ("\n\nHuman: …\n\nAssistant:").

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::chat::{ChatMessage, Role};
use crate::jsonl;

/// Message lists or plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    #[default]
    Conversational,
    Standard,
}

impl crate::choice::Choice for Style {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "conversational",
            Self::Conversational,
            "role-tagged messages",
        ),
        ("standard", Self::Standard, "plain text"),
    ];
}

/// Which training set to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportKind {
    /// `messages` rows (SFT, from `cai revise`).
    Messages,
    /// `prompt`/`completion` rows (SFT, from `cai revise`).
    PromptCompletion,
    /// `prompt`/`chosen`/`rejected` rows (preference, from `cai label`).
    Preference,
}

impl crate::choice::Choice for ExportKind {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "messages",
            Self::Messages,
            "`messages` rows (SFT, from cai revise)",
        ),
        (
            "prompt-completion",
            Self::PromptCompletion,
            "`prompt`/`completion` rows (SFT, from cai revise)",
        ),
        (
            "preference",
            Self::Preference,
            "`prompt`/`chosen`/`rejected` rows (preference, from cai label)",
        ),
    ];
}

/// Settings of `cai export`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// `cai revise` records (SFT sets) or `cai label` rows (preference sets).
    pub input: PathBuf,
    pub out: PathBuf,
    /// Which set to write; required.
    pub kind: Option<ExportKind>,
    pub style: Style,
    /// Preference sets: write ties (p_a = 0.5) too, with `p_chosen` 0.5 (default: skip them).
    pub keep_ties: bool,
}

/// What `cai export` wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// Rows written.
    pub written: usize,
    /// Preference rows left out because they are ties (p_a = 0.5).
    pub ties_skipped: usize,
    /// Ties written with p_chosen 0.5 (`keep_ties`).
    pub ties_kept: usize,
}

/// The fields of a `cai revise` record that export reads.
#[derive(Debug, Deserialize)]
struct SftRow {
    id: Option<String>,
    conversation: Vec<ChatMessage>,
    #[serde(rename = "final")]
    final_response: String,
}

/// The fields of a `cai label` row that export reads.
#[derive(Debug, Deserialize)]
struct LabelRow {
    id: Option<String>,
    conversation: Vec<ChatMessage>,
    response_a: String,
    response_b: String,
    p_a: f64,
}

/// Writes the export; says how many rows it wrote and how many ties it skipped or kept.
pub fn run(cfg: &ExportConfig) -> Result<ExportSummary> {
    let Some(kind) = cfg.kind else {
        bail!("export: no kind given (messages, prompt-completion or preference)");
    };
    let mut summary = ExportSummary::default();
    let rows = match kind {
        ExportKind::Messages | ExportKind::PromptCompletion => {
            read::<SftRow>(&cfg.input, "a `cai revise` record (conversation, final)")?
                .into_iter()
                .map(|(_, r)| sft_row(r, kind, cfg.style))
                .collect::<Vec<_>>()
        }
        ExportKind::Preference => {
            let mut rows = Vec::new();
            let labels = read::<LabelRow>(
                &cfg.input,
                "a `cai label` row (conversation, response_a, response_b, p_a)",
            )?;
            for (line, r) in labels {
                if r.p_a == 0.5 {
                    if !cfg.keep_ties {
                        summary.ties_skipped += 1;
                        continue;
                    }
                    summary.ties_kept += 1;
                }
                rows.push(
                    preference_row(r, cfg.style)
                        .with_context(|| format!("{}:{line}", cfg.input.display()))?,
                );
            }
            rows
        }
    };
    jsonl::write_all(&cfg.out, &rows).with_context(|| format!("writing {}", cfg.out.display()))?;
    summary.written = rows.len();
    Ok(summary)
}

/// The rows of `path` with their line numbers.
fn read<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<(usize, T)>> {
    let lines: Vec<jsonl::Line<Value>> = jsonl::read(path)?;
    lines
        .into_iter()
        .map(|l| {
            let row = serde_json::from_value(l.value)
                .with_context(|| format!("{}:{}: not {what}", path.display(), l.number))?;
            Ok((l.number, row))
        })
        .collect()
}

fn sft_row(r: SftRow, kind: ExportKind, style: Style) -> Value {
    let mut row = match (kind, style) {
        (ExportKind::Messages, _) => {
            let mut messages = r.conversation;
            messages.push(ChatMessage::assistant(r.final_response));
            json!({ "messages": messages })
        }
        (_, Style::Conversational) => json!({
            "prompt": r.conversation,
            "completion": [ChatMessage::assistant(r.final_response)],
        }),
        (_, Style::Standard) => json!({
            "prompt": transcript(&r.conversation),
            "completion": format!(" {}", r.final_response),
        }),
    };
    if let Some(id) = r.id {
        row["id"] = json!(id);
    }
    row
}

fn preference_row(r: LabelRow, style: Style) -> Result<Value> {
    if !(0.0..=1.0).contains(&r.p_a) {
        bail!(
            "record {}: p_a = {} is not a probability",
            r.id.as_deref().unwrap_or("?"),
            r.p_a
        );
    }
    // A tie written on request (`keep_ties`) keeps A as "chosen" by position only; its
    // p_chosen of 0.5 tells a trainer that uses soft labels it prefers neither.
    let (chosen, rejected, p) = if r.p_a >= 0.5 {
        (r.response_a, r.response_b, r.p_a)
    } else {
        (r.response_b, r.response_a, 1.0 - r.p_a)
    };
    let mut row = match style {
        Style::Conversational => json!({
            "prompt": r.conversation,
            "chosen": [ChatMessage::assistant(chosen)],
            "rejected": [ChatMessage::assistant(rejected)],
        }),
        Style::Standard => json!({
            "prompt": transcript(&r.conversation),
            "chosen": format!(" {chosen}"),
            "rejected": format!(" {rejected}"),
        }),
    };
    row["p_chosen"] = json!(p);
    if let Some(id) = r.id {
        row["id"] = json!(id);
    }
    Ok(row)
}

/// A conversation as an HH-RLHF transcript ending with the assistant's turn to speak.
fn transcript(messages: &[ChatMessage]) -> String {
    let mut s = String::new();
    for m in messages {
        let who = match m.role {
            Role::System => "System",
            Role::User => "Human",
            Role::Assistant => "Assistant",
        };
        s.push_str(&format!("\n\n{who}: {}", m.content));
    }
    s.push_str("\n\nAssistant:");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(p_a: f64) -> LabelRow {
        LabelRow {
            id: Some("x".into()),
            conversation: vec![ChatMessage::user("Hi")],
            response_a: "A".into(),
            response_b: "B".into(),
            p_a,
        }
    }

    #[test]
    fn preference_orders_by_soft_label_and_keeps_it() {
        let r = preference_row(label(0.2), Style::Conversational).unwrap();
        assert_eq!(r["chosen"][0]["content"], "B");
        assert_eq!(r["rejected"][0]["content"], "A");
        assert!((r["p_chosen"].as_f64().unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(r["prompt"][0]["role"], "user");
        let s = preference_row(label(0.9), Style::Standard).unwrap();
        assert_eq!(s["prompt"], "\n\nHuman: Hi\n\nAssistant:");
        assert_eq!(
            (s["chosen"].as_str(), s["rejected"].as_str()),
            (Some(" A"), Some(" B"))
        );
        assert!(preference_row(label(1.5), Style::Standard).is_err());
    }

    #[test]
    fn export_skips_ties_unless_keep_ties() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("labels.jsonl");
        // CoT with --samples 2: votes [2, 2] give exactly 0.5 on rows 2 and 4.
        let rows: Vec<Value> = [0.9, 0.5, 0.2, 0.5]
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({"id": format!("r{i}"), "conversation": [{"role": "user", "content": "Hi"}],
                    "response_a": format!("A{i}"), "response_b": format!("B{i}"), "p_a": p})
            })
            .collect();
        jsonl::write_all(&input, &rows).unwrap();
        let out = dir.path().join("prefs.jsonl");
        let mut cfg = ExportConfig {
            input,
            out: out.clone(),
            kind: Some(ExportKind::Preference),
            ..Default::default()
        };
        let written = |path: &Path| -> Vec<Value> {
            jsonl::read::<Value>(path)
                .unwrap()
                .into_iter()
                .map(|l| l.value)
                .collect()
        };
        let s = run(&cfg).unwrap();
        assert_eq!(
            s,
            ExportSummary {
                written: 2,
                ties_skipped: 2,
                ties_kept: 0
            }
        );
        let ids: Vec<Value> = written(&out).iter().map(|r| r["id"].clone()).collect();
        assert_eq!(ids, [json!("r0"), json!("r2")]);
        cfg.keep_ties = true;
        let s = run(&cfg).unwrap();
        assert_eq!((s.written, s.ties_skipped, s.ties_kept), (4, 0, 2));
        let tie = &written(&out)[1];
        assert_eq!(
            (tie["id"].as_str(), tie["p_chosen"].as_f64()),
            (Some("r1"), Some(0.5))
        );
        assert_eq!(tie["chosen"][0]["content"], "A1");
    }

    #[test]
    fn bad_probability_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("labels.jsonl");
        let row =
            |p: f64| json!({"conversation": [], "response_a": "a", "response_b": "b", "p_a": p});
        jsonl::write_all(&input, &[row(0.7), row(1.5)]).unwrap();
        let err = run(&ExportConfig {
            input,
            out: dir.path().join("out.jsonl"),
            kind: Some(ExportKind::Preference),
            ..Default::default()
        })
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("labels.jsonl:2: record ?: p_a = 1.5"), "{err}");
    }

    #[test]
    fn sft_rows_in_each_shape() {
        let row = || SftRow {
            id: Some("p1".into()),
            conversation: vec![ChatMessage::user("Hi")],
            final_response: "Hello".into(),
        };
        let m = sft_row(row(), ExportKind::Messages, Style::Conversational);
        assert_eq!(
            m["messages"][1],
            json!({"role": "assistant", "content": "Hello"})
        );
        assert_eq!(m["id"], "p1");
        let c = sft_row(row(), ExportKind::PromptCompletion, Style::Conversational);
        assert_eq!(c["completion"][0]["content"], "Hello");
        let s = sft_row(row(), ExportKind::PromptCompletion, Style::Standard);
        assert_eq!(s["completion"], " Hello");
    }
}
