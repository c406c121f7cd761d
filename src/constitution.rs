//! The constitution: the principles that steer critique → revision (SL-CAI, Bai et al. 2022
//! §3) and the comparison questions of AI feedback (RL-CAI, §4), with few-shot examples.
//!
//! Parsed from YAML with unknown keys rejected; [`Constitution::validate`] finds every
//! semantic problem and names its `file:line:column`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};

use crate::inputs::TEXT_CAP;
use crate::prompts::{check_template, TemplateKind};
use crate::yaml_locate::{locate, Seg};

/// A critique/revision principle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principle {
    pub id: String,
    /// Asks the assistant to critique its last response under this principle.
    pub critique: String,
    /// Asks the assistant to rewrite its response to fix what the critique found.
    pub revision: String,
    /// Relative sampling weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

/// A principle for AI feedback: the multiple-choice question asked about two responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonPrinciple {
    pub id: String,
    /// Phrased so that the answer names the better response.
    pub question: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

/// A worked critique → revision round shown to the model before the real one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionExample {
    pub prompt: String,
    pub response: String,
    /// Id of the principle the critique applies.
    pub principle: String,
    pub critique: String,
    pub revision: String,
}

/// A worked comparison shown to the feedback model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonExample {
    pub conversation: String,
    pub response_a: String,
    pub response_b: String,
    /// Id of the comparison principle asked.
    pub principle: String,
    /// "A" or "B".
    pub answer: String,
    /// Step-by-step reasoning for chain-of-thought prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Examples {
    pub revision: Vec<RevisionExample>,
    pub comparison: Vec<ComparisonExample>,
}

/// Prompt templates this constitution brings, paths relative to the constitution file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplatePaths {
    pub initial: Option<PathBuf>,
    pub critique: Option<PathBuf>,
    pub revision: Option<PathBuf>,
    pub feedback: Option<PathBuf>,
    pub feedback_cot: Option<PathBuf>,
    pub feedback_score: Option<PathBuf>,
}

/// A parsed constitution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constitution {
    pub name: String,
    #[serde(deserialize_with = "string_or_number")]
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub principles: Vec<Principle>,
    #[serde(default)]
    pub comparison_principles: Vec<ComparisonPrinciple>,
    #[serde(default)]
    pub examples: Examples,
    #[serde(default)]
    pub templates: TemplatePaths,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        F(f64),
        I(i64),
    }
    Ok(match V::deserialize(d)? {
        V::S(s) => s,
        V::F(f) => f.to_string(),
        V::I(i) => i.to_string(),
    })
}

/// The shipped constitutions, built into the binary (as the prompt templates are) so an
/// installed cai finds them from any folder: `--constitution harmless` names one.
pub const BUILTIN: &[(&str, &str)] = &[
    ("harmless", include_str!("../constitutions/harmless.yaml")),
    (
        "helpful-honest",
        include_str!("../constitutions/helpful-honest.yaml"),
    ),
];

/// The built-in constitution `path` names: a bare name (`harmless`) or the shipped path
/// (`constitutions/harmless.yaml`, the default of revise and label). Callers use it only when
/// no such file exists.
pub fn builtin(path: &Path) -> Option<&'static str> {
    let s = path.to_str()?;
    let name = s
        .strip_prefix("constitutions/")
        .and_then(|r| r.strip_suffix(".yaml"))
        .unwrap_or(s);
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// One problem found by validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A constitution loaded from a file, with its source kept for error positions and hashing.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub constitution: Constitution,
    /// sha256 of the file's bytes.
    pub sha256: String,
    source: String,
}

impl Loaded {
    /// Reads and parses `path`; syntax errors and unknown keys name file:line:column. A path
    /// that names no file but a built-in ([`builtin`]) loads the built-in, so the default works
    /// from any folder; an existing file always wins.
    pub fn read(path: &Path) -> Result<Self> {
        let source = match builtin(path) {
            Some(text) if !path.exists() => text.to_string(),
            _ => crate::inputs::read_text(path, TEXT_CAP, "constitution").map_err(|e| {
                let names: Vec<_> = BUILTIN.iter().map(|(n, _)| *n).collect();
                if path.exists() {
                    e
                } else {
                    e.context(format!(
                        "no constitution {} (built-in ones: {})",
                        path.display(),
                        names.join(", ")
                    ))
                }
            })?,
        };
        let constitution: Constitution = serde_yaml::from_str(&source).map_err(|e| {
            let loc = e
                .location()
                .map(|l| format!("{}:{}:{}", path.display(), l.line(), l.column()))
                .unwrap_or_else(|| path.display().to_string());
            anyhow::anyhow!("{loc}: {}", strip_location(&e.to_string()))
        })?;
        let sha256 = crate::hash::sha256_hex(source.as_bytes());
        Ok(Self {
            path: path.to_path_buf(),
            constitution,
            sha256,
            source,
        })
    }

    /// Reads `path` and fails with every validation problem listed.
    pub fn read_valid(path: &Path) -> Result<Self> {
        let loaded = Self::read(path)?;
        let problems = loaded.validate();
        if !problems.is_empty() {
            bail!("{}", loaded.format_problems(&problems));
        }
        Ok(loaded)
    }

    /// `file:line:column: message` lines.
    pub fn format_problems(&self, problems: &[Problem]) -> String {
        problems
            .iter()
            .map(|p| {
                format!(
                    "{}:{}:{}: {}",
                    self.path.display(),
                    p.line,
                    p.column,
                    p.message
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Absolute path of a template named by the constitution.
    pub fn template_path(&self, rel: &Path) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(rel)
    }

    /// Every semantic problem: duplicate ids, empty texts, weights ≤ 0, examples that name
    /// unknown principles or answers other than A/B, templates missing placeholders.
    pub fn validate(&self) -> Vec<Problem> {
        let c = &self.constitution;
        let mut out = Vec::new();
        let mut push = |path: &[Seg], message: String| {
            let (line, column) = locate(&self.source, path);
            out.push(Problem {
                line,
                column,
                message,
            });
        };
        if c.name.trim().is_empty() {
            push(&[Seg::Key("name")], "empty name".into());
        }
        if c.principles.is_empty() {
            push(
                &[Seg::Key("principles")],
                "no critique/revision principles".into(),
            );
        }
        // The line of the first entry with each id, so a duplicate names both lines.
        let first_line = |list: &'static str, i: usize| {
            locate(
                &self.source,
                &[Seg::Key(list), Seg::Index(i), Seg::Key("id")],
            )
            .0
        };
        let mut seen = HashMap::new();
        for (i, p) in c.principles.iter().enumerate() {
            let at = |f| [Seg::Key("principles"), Seg::Index(i), Seg::Key(f)];
            if p.id.trim().is_empty() {
                push(&at("id"), format!("principle #{} has an empty id", i + 1));
            } else if let Some(&j) = seen.get(p.id.as_str()) {
                push(
                    &at("id"),
                    format!(
                        "duplicate principle id `{}` (first at line {})",
                        p.id,
                        first_line("principles", j)
                    ),
                );
            } else {
                seen.insert(p.id.as_str(), i);
            }
            for (field, text) in [("critique", &p.critique), ("revision", &p.revision)] {
                if text.trim().is_empty() {
                    push(
                        &at(field),
                        format!("principle `{}` has an empty {field} request", p.id),
                    );
                }
            }
            if let Some(w) = p.weight.filter(|w| !(*w > 0.0 && w.is_finite())) {
                push(
                    &at("weight"),
                    format!("principle `{}` has weight {w}; weights must be > 0", p.id),
                );
            }
        }
        let mut seen_cmp = HashMap::new();
        for (i, p) in c.comparison_principles.iter().enumerate() {
            let at = |f| {
                [
                    Seg::Key("comparison_principles"),
                    Seg::Index(i),
                    Seg::Key(f),
                ]
            };
            if p.id.trim().is_empty() {
                push(
                    &at("id"),
                    format!("comparison principle #{} has an empty id", i + 1),
                );
            } else if let Some(&j) = seen_cmp.get(p.id.as_str()) {
                push(
                    &at("id"),
                    format!(
                        "duplicate comparison principle id `{}` (first at line {})",
                        p.id,
                        first_line("comparison_principles", j)
                    ),
                );
            } else {
                seen_cmp.insert(p.id.as_str(), i);
            }
            if p.question.trim().is_empty() {
                push(
                    &at("question"),
                    format!("comparison principle `{}` has an empty question", p.id),
                );
            }
            if let Some(w) = p.weight.filter(|w| !(*w > 0.0 && w.is_finite())) {
                push(
                    &at("weight"),
                    format!(
                        "comparison principle `{}` has weight {w}; weights must be > 0",
                        p.id
                    ),
                );
            }
        }
        for (i, e) in c.examples.revision.iter().enumerate() {
            let at = |f| {
                [
                    Seg::Key("examples"),
                    Seg::Key("revision"),
                    Seg::Index(i),
                    Seg::Key(f),
                ]
            };
            if !seen.contains_key(e.principle.as_str()) {
                push(
                    &at("principle"),
                    format!(
                        "revision example #{} names unknown principle `{}`",
                        i + 1,
                        e.principle
                    ),
                );
            }
            for (field, text) in [
                ("prompt", &e.prompt),
                ("response", &e.response),
                ("critique", &e.critique),
                ("revision", &e.revision),
            ] {
                if text.trim().is_empty() {
                    push(
                        &at(field),
                        format!("revision example #{} has an empty {field}", i + 1),
                    );
                }
            }
        }
        for (i, e) in c.examples.comparison.iter().enumerate() {
            let at = |f| {
                [
                    Seg::Key("examples"),
                    Seg::Key("comparison"),
                    Seg::Index(i),
                    Seg::Key(f),
                ]
            };
            if !seen_cmp.contains_key(e.principle.as_str()) {
                push(
                    &at("principle"),
                    format!(
                        "comparison example #{} names unknown comparison principle `{}`",
                        i + 1,
                        e.principle
                    ),
                );
            }
            if e.answer != "A" && e.answer != "B" {
                push(
                    &at("answer"),
                    format!(
                        "comparison example #{} has answer `{}`; use A or B",
                        i + 1,
                        e.answer
                    ),
                );
            }
            for (field, text) in [
                ("conversation", &e.conversation),
                ("response_a", &e.response_a),
                ("response_b", &e.response_b),
            ] {
                if text.trim().is_empty() {
                    push(
                        &at(field),
                        format!("comparison example #{} has an empty {field}", i + 1),
                    );
                }
            }
        }
        for (kind, rel) in self.template_entries() {
            let path = self.template_path(rel);
            let problem = match crate::inputs::read_text(&path, TEXT_CAP, "template") {
                Err(e) => Some(format!("template `{}`: {e:#}", kind.name())),
                Ok(src) => check_template(kind, &src)
                    .err()
                    .map(|e| format!("template `{}` ({}): {e:#}", kind.name(), path.display())),
            };
            if let Some(message) = problem {
                push(&[Seg::Key("templates"), Seg::Key(kind.name())], message);
            }
        }
        out
    }

    /// The templates this constitution overrides, as paths (relative ones resolved against the
    /// constitution's folder).
    pub fn template_overrides(&self) -> Vec<(TemplateKind, PathBuf)> {
        self.template_entries()
            .into_iter()
            .map(|(kind, rel)| (kind, self.template_path(rel)))
            .collect()
    }

    fn template_entries(&self) -> Vec<(TemplateKind, &Path)> {
        use TemplateKind as K;
        let t = &self.constitution.templates;
        [
            (K::Initial, &t.initial),
            (K::Critique, &t.critique),
            (K::Revision, &t.revision),
            (K::Feedback, &t.feedback),
            (K::FeedbackCot, &t.feedback_cot),
            (K::FeedbackScore, &t.feedback_score),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.as_deref().map(|p| (k, p)))
        .collect()
    }
}

/// serde_yaml appends " at line X column Y" to messages; we print the position up front.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl Constitution {
    /// Draws `n` critique principles with replacement, in proportion to their weights.
    pub fn sample_principles<'a, R: Rng>(
        &'a self,
        rng: &mut R,
        n: usize,
    ) -> Result<Vec<&'a Principle>> {
        let dist = weighted(self.principles.iter().map(|p| p.weight))
            .with_context(|| format!("constitution `{}`: cannot sample principles", self.name))?;
        Ok((0..n).map(|_| &self.principles[dist.sample(rng)]).collect())
    }

    /// Draws `n` comparison principles with replacement, in proportion to their weights.
    pub fn sample_comparisons<'a, R: Rng>(
        &'a self,
        rng: &mut R,
        n: usize,
    ) -> Result<Vec<&'a ComparisonPrinciple>> {
        let dist =
            weighted(self.comparison_principles.iter().map(|p| p.weight)).with_context(|| {
                format!(
                    "constitution `{}`: cannot sample comparison principles",
                    self.name
                )
            })?;
        Ok((0..n)
            .map(|_| &self.comparison_principles[dist.sample(rng)])
            .collect())
    }

    pub fn principle(&self, id: &str) -> Option<&Principle> {
        self.principles.iter().find(|p| p.id == id)
    }

    pub fn comparison(&self, id: &str) -> Option<&ComparisonPrinciple> {
        self.comparison_principles.iter().find(|p| p.id == id)
    }
}

fn weighted(weights: impl Iterator<Item = Option<f64>>) -> Result<WeightedIndex<f64>> {
    WeightedIndex::new(weights.map(|w| w.unwrap_or(1.0)))
        .map_err(|e| anyhow::anyhow!("no principles with positive weight ({e})"))
}

#[cfg(test)]
mod tests;

/// A human-readable listing for `cai constitution show`.
pub fn describe(c: &Constitution) -> String {
    let mut s = format!("{} (version {})\n", c.name, c.version);
    if !c.description.trim().is_empty() {
        s.push_str(&format!("{}\n", c.description.trim()));
    }
    let total: f64 = c.principles.iter().map(|p| p.weight.unwrap_or(1.0)).sum();
    s.push_str(&format!(
        "\ncritique/revision principles ({}):\n",
        c.principles.len()
    ));
    for p in &c.principles {
        let w = p.weight.unwrap_or(1.0);
        s.push_str(&format!(
            "  {:<28} weight {:<4} p={:.3}  {}\n",
            p.id,
            w,
            w / total,
            p.critique
        ));
    }
    s.push_str(&format!(
        "\ncomparison principles ({}):\n",
        c.comparison_principles.len()
    ));
    for p in &c.comparison_principles {
        s.push_str(&format!(
            "  {:<28} weight {:<4} {}\n",
            p.id,
            p.weight.unwrap_or(1.0),
            p.question
        ));
    }
    s.push_str(&format!(
        "\nfew-shot examples: {} revision, {} comparison\n",
        c.examples.revision.len(),
        c.examples.comparison.len()
    ));
    s
}
