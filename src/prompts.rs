//! Prompt templates (`prompts/*.txt`) rendered with named placeholders into chat prompts.
//!
//! A template is a sequence of sections, each opened by a line `### system`, `### user`,
//! `### assistant`, `### conversation` (the conversation's turns go here) or `### prefill`
//! (text the assistant's reply starts with; last section only). Inside a section `{name}` is a
//! placeholder and `{{` / `}}` are literal braces. Every kind of template has a fixed set of
//! placeholders: an unknown one, or a required one that is missing, is an error when the
//! template is loaded; a value missing at render time is an error too — never silent text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::chat::Prompt;
use crate::chat::{ChatMessage, Role};

/// What a template is for; fixes its placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemplateKind {
    /// The policy's first answer to a red-team prompt.
    Initial,
    /// Critique of the last answer under a principle.
    Critique,
    /// Revision of the answer given the critique.
    Revision,
    /// Multiple-choice comparison of two responses (AI feedback).
    Feedback,
    /// Chain-of-thought comparison: reasoning first, then the answer.
    FeedbackCot,
    /// One response rated 1–10 under a principle (score mode).
    FeedbackScore,
}

impl TemplateKind {
    pub const ALL: [TemplateKind; 6] = [
        TemplateKind::Initial,
        TemplateKind::Critique,
        TemplateKind::Revision,
        TemplateKind::Feedback,
        TemplateKind::FeedbackCot,
        TemplateKind::FeedbackScore,
    ];

    /// File stem in `prompts/` and key in a constitution's `templates:`.
    pub fn name(self) -> &'static str {
        match self {
            TemplateKind::Initial => "initial",
            TemplateKind::Critique => "critique",
            TemplateKind::Revision => "revision",
            TemplateKind::Feedback => "feedback",
            TemplateKind::FeedbackCot => "feedback_cot",
            TemplateKind::FeedbackScore => "feedback_score",
        }
    }

    /// (placeholders that must appear, whether a `### conversation` section must appear).
    fn required(self) -> (&'static [&'static str], bool) {
        match self {
            TemplateKind::Initial => (&[], true),
            TemplateKind::Critique => (&["response", "critique_request"], true),
            TemplateKind::Revision => (
                &[
                    "response",
                    "critique_request",
                    "critique",
                    "revision_request",
                ],
                true,
            ),
            TemplateKind::Feedback | TemplateKind::FeedbackCot => (
                &["conversation", "question", "response_a", "response_b"],
                false,
            ),
            TemplateKind::FeedbackScore => (&["conversation", "question", "response"], false),
        }
    }

    /// Placeholders a template may use beyond the required ones.
    fn optional(self) -> &'static [&'static str] {
        &["principle_id"]
    }

    fn default_source(self) -> &'static str {
        match self {
            TemplateKind::Initial => include_str!("../prompts/initial.txt"),
            TemplateKind::Critique => include_str!("../prompts/critique.txt"),
            TemplateKind::Revision => include_str!("../prompts/revision.txt"),
            TemplateKind::Feedback => include_str!("../prompts/feedback.txt"),
            TemplateKind::FeedbackCot => include_str!("../prompts/feedback_cot.txt"),
            TemplateKind::FeedbackScore => include_str!("../prompts/feedback_score.txt"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(String),
}

#[derive(Debug, Clone, PartialEq)]
enum SectionKind {
    Message(Role),
    Conversation,
    Prefill,
}

#[derive(Debug, Clone, PartialEq)]
struct Section {
    kind: SectionKind,
    pieces: Vec<Piece>,
}

/// A parsed, checked template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub kind: TemplateKind,
    sections: Vec<Section>,
}

/// Values for one rendering.
#[derive(Debug, Clone, Default)]
pub struct Vars<'a> {
    pub conversation: &'a [ChatMessage],
    pub values: HashMap<&'static str, &'a str>,
}

impl<'a> Vars<'a> {
    pub fn new(conversation: &'a [ChatMessage]) -> Self {
        Self {
            conversation,
            values: HashMap::new(),
        }
    }
    pub fn set(mut self, name: &'static str, value: &'a str) -> Self {
        self.values.insert(name, value);
        self
    }
}

/// Checks a template's source for `kind` without keeping it.
pub fn check_template(kind: TemplateKind, source: &str) -> Result<()> {
    Template::parse(kind, source).map(|_| ())
}

impl Template {
    /// Parses and checks `source`; errors name the line.
    pub fn parse(kind: TemplateKind, source: &str) -> Result<Self> {
        let mut sections: Vec<(usize, SectionKind, String)> = Vec::new();
        for (i, line) in source.lines().enumerate() {
            if let Some(head) = line.strip_prefix("### ") {
                let k = match head.trim() {
                    "system" => SectionKind::Message(Role::System),
                    "user" => SectionKind::Message(Role::User),
                    "assistant" => SectionKind::Message(Role::Assistant),
                    "conversation" => SectionKind::Conversation,
                    "prefill" => SectionKind::Prefill,
                    other => bail!(
                        "line {}: unknown section `### {other}` (use system, user, assistant, conversation or prefill)",
                        i + 1
                    ),
                };
                sections.push((i + 1, k, String::new()));
            } else if let Some((_, _, body)) = sections.last_mut() {
                body.push_str(line);
                body.push('\n');
            } else if !line.trim().is_empty() {
                bail!("line {}: text before the first `### role` section", i + 1);
            }
        }
        if sections.is_empty() {
            bail!("no sections: a template needs at least one `### user` section");
        }
        let (required, needs_conversation) = kind.required();
        let allowed: Vec<&str> = required.iter().chain(kind.optional()).copied().collect();
        let mut used = Vec::new();
        let mut parsed = Vec::new();
        let n = sections.len();
        for (idx, (line, k, body)) in sections.into_iter().enumerate() {
            if k == SectionKind::Prefill && idx + 1 != n {
                bail!("line {line}: `### prefill` must be the last section");
            }
            if k == SectionKind::Conversation && !body.trim().is_empty() {
                bail!("line {line}: `### conversation` takes no text; it stands for the conversation's turns");
            }
            // Message text is trimmed; prefill keeps inner spacing but not the final newline.
            let body = match k {
                SectionKind::Prefill => body
                    .trim_start_matches('\n')
                    .trim_end_matches('\n')
                    .to_string(),
                _ => body.trim().to_string(),
            };
            let pieces = parse_pieces(&body).with_context(|| format!("section at line {line}"))?;
            for p in &pieces {
                if let Piece::Var(v) = p {
                    if !allowed.contains(&v.as_str()) {
                        bail!(
                            "section at line {line}: unknown placeholder `{{{v}}}` for a {} template (allowed: {})",
                            kind.name(),
                            allowed.iter().map(|a| format!("{{{a}}}")).collect::<Vec<_>>().join(", ")
                        );
                    }
                    used.push(v.clone());
                }
            }
            parsed.push(Section { kind: k, pieces });
        }
        for r in required {
            if !used.iter().any(|u| u == r) {
                bail!(
                    "missing placeholder `{{{r}}}` required by a {} template",
                    kind.name()
                );
            }
        }
        let has_conv = parsed.iter().any(|s| s.kind == SectionKind::Conversation);
        if needs_conversation && !has_conv {
            bail!(
                "a {} template needs a `### conversation` section",
                kind.name()
            );
        }
        Ok(Self {
            kind,
            sections: parsed,
        })
    }

    /// The built-in template of `kind` (from `prompts/` at build time).
    pub fn builtin(kind: TemplateKind) -> Self {
        Self::parse(kind, kind.default_source()).expect("built-in templates are valid")
    }

    /// Renders into a prompt; a placeholder without a value is an error.
    pub fn render(&self, vars: &Vars) -> Result<Prompt> {
        let mut messages = Vec::new();
        let mut prefill = String::new();
        for s in &self.sections {
            let mut text = String::new();
            for p in &s.pieces {
                match p {
                    Piece::Text(t) => text.push_str(t),
                    Piece::Var(v) => {
                        text.push_str(vars.values.get(v.as_str()).ok_or_else(|| {
                            anyhow!(
                                "no value for placeholder `{{{v}}}` of the {} template",
                                self.kind.name()
                            )
                        })?)
                    }
                }
            }
            match &s.kind {
                SectionKind::Message(role) => messages.push(ChatMessage::new(*role, text)),
                SectionKind::Conversation => messages.extend(vars.conversation.iter().cloned()),
                SectionKind::Prefill => prefill = text,
            }
        }
        Ok(Prompt { messages, prefill })
    }
}

fn parse_pieces(body: &str) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) if ch.is_ascii_alphanumeric() || ch == '_' => name.push(ch),
                        Some(ch) => bail!("bad character {ch:?} in placeholder `{{{name}…`; write `{{{{` for a literal brace"),
                        None => bail!("unclosed placeholder `{{{name}`"),
                    }
                }
                if name.is_empty() {
                    bail!("empty placeholder `{{}}`");
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Var(name));
            }
            '}' => bail!("stray `}}`; write `}}}}` for a literal brace"),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The templates a run uses.
#[derive(Debug, Clone)]
pub struct PromptSet {
    templates: HashMap<TemplateKind, Template>,
}

impl PromptSet {
    /// Built-in templates, overridden by `overrides` (the constitution's `templates:` entries,
    /// as paths), overridden by files named `<kind>.txt` in `dir`.
    pub fn load(overrides: &[(TemplateKind, PathBuf)], dir: Option<&Path>) -> Result<Self> {
        let mut templates = HashMap::new();
        for kind in TemplateKind::ALL {
            let from_constitution = overrides
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, p)| p.clone());
            let from_dir = dir
                .map(|d| d.join(format!("{}.txt", kind.name())))
                // Whatever stands at that name is used (and a FIFO or device refused by the
                // reader), never silently passed over.
                .filter(|p| p.exists());
            let template = match from_dir.or(from_constitution) {
                Some(path) => {
                    let src = crate::inputs::read_text(&path, crate::inputs::TEXT_CAP, "template")?;
                    Template::parse(kind, &src)
                        .with_context(|| format!("template {}", path.display()))?
                }
                None => Template::builtin(kind),
            };
            templates.insert(kind, template);
        }
        Ok(Self { templates })
    }

    pub fn get(&self, kind: TemplateKind) -> &Template {
        &self.templates[&kind]
    }
}

#[cfg(test)]
mod tests;
