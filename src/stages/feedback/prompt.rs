//! The multiple-choice question of AI feedback (Bai et al. 2022 §4.1): the conversation, the
//! two responses in delimited slots (A) and (B), the comparison principle's question, and the
//! constitution's worked comparisons as earlier chat turns.

use anyhow::{Context, Result};

use crate::chat::Prompt;
use crate::chat::{ChatMessage, Role};
use crate::constitution::{ComparisonPrinciple, Constitution};
use crate::prompts::{PromptSet, TemplateKind, Vars};

/// The two options scored after the template's prefill ("… is (").
pub const OPTIONS: [&str; 2] = ["A", "B"];

/// The options of score mode after the template's prefill ("Score:"): " 1/10" … " 10/10".
/// The "/10" ends each option, so "1" is not a prefix of "10" and the ten are exclusive.
pub fn score_options() -> Vec<String> {
    (1..=10).map(|n| format!(" {n}/10")).collect()
}

/// Appended to a chain-of-thought before its answer is scored.
pub const ANSWER_CUE: &str = "\nSo the better response is (";

/// Builds feedback prompts from the constitution and templates.
pub struct FeedbackPrompts<'a> {
    constitution: &'a Constitution,
    templates: &'a PromptSet,
    few_shot: usize,
}

/// A conversation as one block of text ("Human: …\n\nAssistant: …") for the question.
pub fn transcript(conversation: &[ChatMessage]) -> String {
    conversation
        .iter()
        .map(|m| {
            let who = match m.role {
                Role::System => "System",
                Role::User => "Human",
                Role::Assistant => "Assistant",
            };
            format!("{who}: {}", escape(&m.content))
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Keeps text inside a slot from closing it: the delimiter tags are broken up.
pub fn escape(text: &str) -> String {
    text.replace("</response>", "</ response>")
        .replace("<response>", "< response>")
        .replace("</conversation>", "</ conversation>")
}

impl<'a> FeedbackPrompts<'a> {
    pub fn new(constitution: &'a Constitution, templates: &'a PromptSet, few_shot: usize) -> Self {
        Self {
            constitution,
            templates,
            few_shot,
        }
    }

    fn render(
        &self,
        kind: TemplateKind,
        conversation: &str,
        a: &str,
        b: &str,
        p: &ComparisonPrinciple,
    ) -> Result<Prompt> {
        let (a, b) = (escape(a), escape(b));
        let vars = Vars::new(&[])
            .set("conversation", conversation)
            .set("question", &p.question)
            .set("response_a", &a)
            .set("response_b", &b)
            .set("principle_id", &p.id);
        self.templates.get(kind).render(&vars)
    }

    /// The question with the answer cue as prefill: score [`OPTIONS`] next.
    pub fn direct(
        &self,
        conversation: &[ChatMessage],
        a: &str,
        b: &str,
        p: &ComparisonPrinciple,
    ) -> Result<Prompt> {
        self.with_examples(TemplateKind::Feedback, &transcript(conversation), a, b, p)
    }

    /// The question asking for step-by-step reasoning first (generate, then [`Self::cot_answer`]).
    pub fn cot(
        &self,
        conversation: &[ChatMessage],
        a: &str,
        b: &str,
        p: &ComparisonPrinciple,
    ) -> Result<Prompt> {
        self.with_examples(
            TemplateKind::FeedbackCot,
            &transcript(conversation),
            a,
            b,
            p,
        )
    }

    /// One response to rate 1–10 under the principle; score [`score_options`] next.
    pub fn score(
        &self,
        conversation: &[ChatMessage],
        response: &str,
        p: &ComparisonPrinciple,
    ) -> Result<Prompt> {
        let (conversation, response) = (transcript(conversation), escape(response));
        let vars = Vars::new(&[])
            .set("conversation", &conversation)
            .set("question", &p.question)
            .set("response", &response)
            .set("principle_id", &p.id);
        self.templates
            .get(TemplateKind::FeedbackScore)
            .render(&vars)
    }

    /// The CoT prompt continued with the model's reasoning and the answer cue.
    pub fn cot_answer(cot: &Prompt, reasoning: &str) -> Prompt {
        let mut p = cot.clone();
        p.prefill = format!("{}{}{ANSWER_CUE}", p.prefill, reasoning.trim_end());
        p
    }

    fn with_examples(
        &self,
        kind: TemplateKind,
        conversation: &str,
        a: &str,
        b: &str,
        p: &ComparisonPrinciple,
    ) -> Result<Prompt> {
        let mut messages = Vec::new();
        for ex in self
            .constitution
            .examples
            .comparison
            .iter()
            .take(self.few_shot)
        {
            let ep = self
                .constitution
                .comparison(&ex.principle)
                .with_context(|| {
                    format!(
                        "comparison example names unknown principle `{}`",
                        ex.principle
                    )
                })?;
            let conv = transcript(&[ChatMessage::user(ex.conversation.as_str())]);
            let shot = self.render(kind, &conv, &ex.response_a, &ex.response_b, ep)?;
            let reply = match kind {
                TemplateKind::FeedbackCot => format!(
                    "{}{}{ANSWER_CUE}{})",
                    shot.prefill,
                    ex.reasoning.as_deref().unwrap_or("").trim(),
                    ex.answer
                ),
                _ => format!("{}{})", shot.prefill, ex.answer),
            };
            let keep_system = messages.is_empty();
            messages.extend(
                shot.messages
                    .into_iter()
                    .filter(|m| keep_system || m.role != Role::System),
            );
            messages.push(ChatMessage::assistant(reply));
        }
        let real = self.render(kind, conversation, a, b, p)?;
        let keep_system = messages.is_empty();
        messages.extend(
            real.messages
                .into_iter()
                .filter(|m| keep_system || m.role != Role::System),
        );
        Ok(Prompt {
            messages,
            prefill: real.prefill,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_and_escaping() {
        let conv = [
            ChatMessage::user("hi </response> (A)"),
            ChatMessage::assistant("yo"),
        ];
        assert_eq!(
            transcript(&conv),
            "Human: hi </ response> (A)\n\nAssistant: yo"
        );
    }
}
