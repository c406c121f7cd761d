//! The feedback model's rating as a direct RL reward ("direct RLAIF", Lee et al. 2023 §2.3):
//! each response is rated 1–10 under one comparison principle drawn from the constitution,
//! with `cai label --mode score`'s prompt and exact option probabilities, and its expected
//! rating `Σ s·P(s)` is the reward — no reward model in between.
//!
//! The principle is drawn once per prompt, from a generator seeded by the run seed and the
//! prompt's conversation: every response to a prompt (a GRPO group, and the same prompt in
//! later steps) is rated under the same rubric, so group-relative advantages compare
//! responses, not rubrics, and a resumed run draws the same principles. A response whose
//! feedback prompt overflows the feedback model's context has no rating (`None`): the
//! trainer gives it no advantage and counts it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::chat::ChatMessage;
use crate::constitution::{ComparisonPrinciple, Loaded};
use crate::hash::fnv1a;
use crate::llm::{open_backend, Backend, BackendKind, ChoiceRequest, ContextOverflow};
use crate::prompts::PromptSet;
use crate::stages::feedback::prompt::{score_options, FeedbackPrompts};
use crate::stages::feedback::soft;

/// Settings of the feedback model as a reward. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelerRewardConfig {
    /// Constitution whose comparison principles are drawn (default
    /// `constitutions/harmless.yaml`).
    pub constitution: PathBuf,
    /// Feedback model (default `default`).
    pub model: String,
    /// Backend of the feedback model (default `local`).
    pub backend: BackendKind,
    /// Folder with template overrides (`feedback_score.txt`).
    pub templates: Option<PathBuf>,
    /// Few-shot examples of the constitution in the prompt (default 0).
    pub few_shot: usize,
}

impl Default for LabelerRewardConfig {
    fn default() -> Self {
        Self {
            constitution: PathBuf::from("constitutions/harmless.yaml"),
            model: "default".into(),
            backend: BackendKind::Local,
            templates: None,
            few_shot: 0,
        }
    }
}

/// The feedback model, ready to rate responses.
pub struct LabelerRater {
    backend: Box<dyn Backend>,
    loaded: Loaded,
    templates: PromptSet,
    few_shot: usize,
    seed: u64,
}

/// Ratings of one call (`None` where the prompt overflowed the context) and how many
/// prompts overflowed.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratings {
    pub ratings: Vec<Option<f64>>,
    pub overflowed: usize,
}

impl LabelerRater {
    /// Loads the constitution and templates and opens the feedback model.
    pub fn open(cfg: &LabelerRewardConfig, seed: u64) -> Result<Self> {
        let loaded = Loaded::read_valid(&cfg.constitution)?;
        if loaded.constitution.comparison_principles.is_empty() {
            bail!(
                "{}: no comparison_principles: the feedback reward needs at least one",
                cfg.constitution.display()
            );
        }
        let templates = PromptSet::load(&loaded.template_overrides(), cfg.templates.as_deref())?;
        let backend = open_backend(cfg.backend, &cfg.model)
            .with_context(|| format!("opening the feedback model {}", cfg.model))?;
        Ok(Self {
            backend,
            loaded,
            templates,
            few_shot: cfg.few_shot,
            seed,
        })
    }

    /// The feedback model as the backend reports it (name, weights' sha256, context).
    pub fn model_info(&self) -> &crate::llm::ModelInfo {
        self.backend.info()
    }

    /// The principle every response to `conversation` is rated under, drawn from the run
    /// seed and the conversation (roles and contents, each length-prefixed).
    fn principle(&self, conversation: &[ChatMessage]) -> Result<ComparisonPrinciple> {
        let mut bytes = Vec::new();
        for m in conversation {
            for part in [format!("{:?}", m.role), m.content.clone()] {
                bytes.extend((part.len() as u64).to_le_bytes());
                bytes.extend(part.as_bytes());
            }
        }
        let key = fnv1a(&[&self.seed.to_le_bytes(), &bytes]);
        let mut rng = ChaCha8Rng::seed_from_u64(key);
        let drawn = self.loaded.constitution.sample_comparisons(&mut rng, 1)?;
        Ok(drawn[0].clone())
    }

    /// The feedback requests of `(conversation, response)` items, in order.
    fn requests(&self, items: &[(&[ChatMessage], &str)]) -> Result<Vec<ChoiceRequest>> {
        let prompts =
            FeedbackPrompts::new(&self.loaded.constitution, &self.templates, self.few_shot);
        let options = score_options();
        items
            .iter()
            .map(|(conversation, response)| {
                let p = self.principle(conversation)?;
                Ok(ChoiceRequest {
                    prompt: prompts.score(conversation, response, &p)?,
                    options: options.clone(),
                })
            })
            .collect()
    }

    /// Expected 1–10 ratings of `(conversation, response)` items, in order; `None` for an
    /// item whose prompt overflows the feedback model's context.
    pub fn rate(&self, items: &[(&[ChatMessage], &str)]) -> Result<Ratings> {
        let requests = self.requests(items)?;
        let mut out = Ratings {
            ratings: Vec::with_capacity(items.len()),
            overflowed: 0,
        };
        for answer in self.backend.choose(&requests) {
            match answer {
                Ok(c) => out
                    .ratings
                    .push(Some(soft::expected_score(&soft::score_distribution(
                        &c.logprobs,
                    )))),
                Err(e) if e.downcast_ref::<ContextOverflow>().is_some() => {
                    out.overflowed += 1;
                    out.ratings.push(None);
                }
                Err(e) => return Err(e.context("the feedback model failed to rate a response")),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn ratings_are_expected_scores_and_deterministic() -> Result<()> {
        let cfg = LabelerRewardConfig {
            constitution: root().join("constitutions/harmless.yaml"),
            backend: BackendKind::Mock,
            ..LabelerRewardConfig::default()
        };
        let rater = LabelerRater::open(&cfg, 3)?;
        let conv = vec![ChatMessage::user("How do I pick a lock?")];
        let items: Vec<(&[ChatMessage], &str)> = vec![
            (&conv, "I cannot help with that."),
            (&conv, "Use a tension wrench."),
        ];
        let a = rater.rate(&items)?;
        assert_eq!(a.ratings.len(), 2);
        assert_eq!(a.overflowed, 0);
        assert!(
            a.ratings
                .iter()
                .all(|r| r.is_some_and(|r| (1.0..=10.0).contains(&r))),
            "{a:?}"
        );
        assert_ne!(a.ratings[0], a.ratings[1]);
        // Same seed, same principles, same ratings; the mock's answers depend on the prompt.
        assert_eq!(LabelerRater::open(&cfg, 3)?.rate(&items)?, a);
        // The expected score of a distribution: P(1) = P(10) = ½ → 5.5.
        let lp = [
            0.5f64.ln(),
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            0.5f64.ln(),
        ];
        assert!((soft::expected_score(&soft::score_distribution(&lp)) - 5.5).abs() < 1e-12);
        Ok(())
    }

    /// The question of the principle a feedback prompt rates under.
    fn principle_in(prompt: &str, rater: &LabelerRater) -> String {
        let found: Vec<&str> = rater
            .loaded
            .constitution
            .comparison_principles
            .iter()
            .map(|p| p.question.as_str())
            .filter(|q| prompt.contains(q))
            .collect();
        assert_eq!(found.len(), 1, "{prompt}");
        found[0].to_string()
    }

    /// Eight responses to one prompt (a GRPO group) are rated under one principle; other
    /// prompts draw theirs independently; an overflowing response has no rating.
    #[test]
    fn labeler_reward_draws_one_principle_per_prompt() -> Result<()> {
        let cfg = LabelerRewardConfig {
            constitution: root().join("constitutions/harmless.yaml"),
            backend: BackendKind::Mock,
            ..LabelerRewardConfig::default()
        };
        let rater = LabelerRater::open(&cfg, 3)?;
        let responses: Vec<String> = (0..8).map(|i| format!("answer number {i}")).collect();
        let principles_of = |conv: &[ChatMessage]| -> Result<Vec<String>> {
            let items: Vec<(&[ChatMessage], &str)> =
                responses.iter().map(|r| (conv, r.as_str())).collect();
            Ok(rater
                .requests(&items)?
                .iter()
                .map(|r| principle_in(&prompt_text(&r.prompt), &rater))
                .collect())
        };
        let mut drawn = std::collections::BTreeSet::new();
        for i in 0..8 {
            let conv = vec![ChatMessage::user(format!("question {i}"))];
            let within = principles_of(&conv)?;
            assert!(within.iter().all(|p| *p == within[0]), "{within:?}");
            drawn.insert(within[0].clone());
        }
        assert!(
            drawn.len() > 1,
            "eight prompts drew one principle: {drawn:?}"
        );
        // A response past the mock's 4096-word context: no rating, counted.
        let conv = vec![ChatMessage::user("How do I pick a lock?")];
        let long = "word ".repeat(5000);
        let rated = rater.rate(&[(&conv, "No."), (&conv, long.as_str())])?;
        assert_eq!(rated.overflowed, 1);
        assert!(
            rated.ratings[0].is_some() && rated.ratings[1].is_none(),
            "{rated:?}"
        );
        Ok(())
    }

    fn prompt_text(p: &crate::llm::Prompt) -> String {
        p.messages.iter().map(|m| m.content.as_str()).collect()
    }
}
