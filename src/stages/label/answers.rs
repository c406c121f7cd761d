//! Requests that carry their identity, and answers matched to them by it.
//!
//! A batch of pairs becomes one batch of backend requests; every request is built with an
//! [`Ask`] (which pair of the batch, which principle, which slot order, which sample, which
//! part of the method) and its answer is read back by that identity, never by position. The
//! backend must return one answer per request: a missing or extra answer, two requests with
//! the same identity, a reading of an answer that was never asked for, or an answer left
//! unread for a pair that got a label, is an error. A prompt that overflows the context is an
//! answer too (`None`): its pair gets no label and every other pair's label is unchanged.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use crate::llm::{Backend, Choice, ChoiceRequest, ContextOverflow, GenerateRequest, Generation};

/// What a request asks, within a pair and principle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// Direct mode: "(A) or (B)?".
    Question,
    /// Direct mode: the same question about a content-free pair ("N/A" twice).
    ContentFree,
    /// CoT mode: the sampled reasoning.
    Reasoning,
    /// CoT mode: "(A) or (B)?" after one sample of reasoning.
    Answer,
    /// Likelihood mode: the responses after the bare conversation.
    Unguided,
    /// Likelihood mode: the responses after the conversation and the principle.
    Guided,
    /// Score mode: the rating of response_a (order 0) or response_b (order 1).
    Rating,
}

/// The identity of one request: pair (index in the batch), principle (index in the pair's
/// sampled principles), slot order (0: response_a in slot (A); 1: swapped), sample, part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ask {
    pub pair: usize,
    pub principle: usize,
    pub order: usize,
    pub sample: usize,
    pub part: Part,
}

impl Ask {
    pub fn new(pair: usize, principle: usize, order: usize, part: Part) -> Self {
        Self {
            pair,
            principle,
            order,
            sample: 0,
            part,
        }
    }

    pub fn sample(self, sample: usize) -> Self {
        Self { sample, ..self }
    }
}

/// The answers of one batch, by identity; `None` where the prompt overflowed the context.
pub struct Answers<T> {
    left: HashMap<Ask, Option<T>>,
}

impl<T> Answers<T> {
    /// Pairs each answer with the request it answers; `what` names the step for errors.
    fn match_up(asks: Vec<Ask>, results: Vec<Result<T>>, what: &str) -> Result<Self> {
        if asks.len() != results.len() {
            bail!(
                "{what}: the backend returned {} answers to {} requests",
                results.len(),
                asks.len()
            );
        }
        let mut left = HashMap::with_capacity(asks.len());
        for (ask, result) in asks.into_iter().zip(results) {
            let answer = match result {
                Ok(v) => Some(v),
                Err(e) if e.downcast_ref::<ContextOverflow>().is_some() => None,
                Err(e) => return Err(e.context(what.to_string())),
            };
            if left.insert(ask, answer).is_some() {
                bail!("internal error: two requests ask {ask:?}");
            }
        }
        Ok(Self { left })
    }

    /// The answer of `ask` (`None`: its prompt overflowed); asking twice, or for something
    /// never requested, is an error.
    pub fn take(&mut self, ask: Ask) -> Result<Option<T>> {
        self.left
            .remove(&ask)
            .with_context(|| format!("internal error: no answer to {ask:?}"))
    }

    /// The answer of `ask`, left in place.
    pub fn get(&self, ask: &Ask) -> Result<Option<&T>> {
        self.left
            .get(ask)
            .map(Option::as_ref)
            .with_context(|| format!("internal error: no answer to {ask:?}"))
    }

    /// The sum of `f` over the answers that came back.
    pub fn total(&self, f: impl Fn(&T) -> usize) -> usize {
        self.left.values().flatten().map(f).sum()
    }

    /// Checks that every answer was read, except those of pairs that got no label.
    pub fn finish(self, labelled: impl Fn(usize) -> bool) -> Result<()> {
        match self.left.keys().filter(|a| labelled(a.pair)).min() {
            Some(a) => bail!("internal error: the answer to {a:?} was never read"),
            None => Ok(()),
        }
    }
}

/// Runs choose requests; each answer must score every option of its request.
pub fn choose(
    backend: &dyn Backend,
    asks: Vec<(Ask, ChoiceRequest)>,
    what: &str,
) -> Result<Answers<Choice>> {
    let (asks, requests): (Vec<Ask>, Vec<ChoiceRequest>) = asks.into_iter().unzip();
    let results = backend.choose(&requests);
    if let Some((ask, (req, c))) =
        asks.iter()
            .zip(requests.iter().zip(&results))
            .find_map(|(a, (r, c))| match c {
                Ok(c) if c.logprobs.len() != r.options.len() => Some((a, (r, c))),
                _ => None,
            })
    {
        bail!(
            "{what}: the backend scored {} options of {:?} where {} were asked",
            c.logprobs.len(),
            ask,
            req.options.len()
        );
    }
    Answers::match_up(asks, results, what)
}

/// Runs generation requests; each answer must hold the `n` samples asked for.
pub fn generate(
    backend: &dyn Backend,
    asks: &[(Ask, GenerateRequest)],
    what: &str,
) -> Result<Answers<Generation>> {
    let requests: Vec<GenerateRequest> = asks.iter().map(|(_, r)| r.clone()).collect();
    let results = backend.generate(&requests);
    for ((ask, req), g) in asks.iter().zip(&results) {
        if let Ok(g) = g {
            if g.completions.len() != req.n {
                bail!(
                    "{what}: the backend returned {} samples for {ask:?} where {} were asked",
                    g.completions.len(),
                    req.n
                );
            }
        }
    }
    Answers::match_up(asks.iter().map(|(a, _)| *a).collect(), results, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    fn ask(pair: usize) -> Ask {
        Ask::new(pair, 0, 0, Part::Question)
    }

    #[test]
    fn answers_are_read_by_identity_not_position() {
        let overflow = || {
            Err(anyhow::Error::new(ContextOverflow {
                prompt_tokens: 9,
                needed: 10,
                context: 8,
            }))
        };
        let mut a = Answers::match_up(
            vec![ask(2), ask(0), ask(1)],
            vec![Ok(20), overflow(), Ok(10)],
            "t",
        )
        .unwrap();
        assert_eq!(a.take(ask(1)).unwrap(), Some(10));
        assert_eq!(a.take(ask(0)).unwrap(), None);
        assert!(a.take(ask(0)).is_err(), "read twice");
        assert!(a.take(ask(7)).is_err(), "never asked");
        // Pair 2 got a label but its answer was never read.
        let e = a.finish(|p| p != 0).unwrap_err().to_string();
        assert!(e.contains("never read") && e.contains("pair: 2"), "{e}");
    }

    #[test]
    fn missing_extra_and_duplicate_answers_are_errors() {
        let e = Answers::match_up(vec![ask(0), ask(1)], vec![Ok(1)], "step")
            .err()
            .unwrap();
        assert!(e.to_string().contains("1 answers to 2 requests"), "{e}");
        assert!(Answers::match_up(vec![ask(0)], vec![Ok(1), Ok(2)], "s").is_err());
        assert!(Answers::match_up(vec![ask(0), ask(0)], vec![Ok(1), Ok(2)], "s").is_err());
        // A failure that is not an overflow fails the batch, with its step named.
        let e = Answers::<u8>::match_up(vec![ask(0)], vec![Err(anyhow!("down"))], "scoring")
            .err()
            .unwrap();
        assert_eq!(format!("{e:#}"), "scoring: down");
    }
}
