//! Token sampling from next-token logits: penalties, then greedy or temperature sampling with
//! top-k, nucleus (top-p) and min-p filters.
//!
//! One step of [`Sampler::sample`] runs, in this order:
//!
//! 1. **penalties** on the raw logits, from the tokens this sampler generated before:
//!    - repetition penalty `r` (CTRL, Keskar et al. 2019; llama.cpp's `repeat_penalty`): every
//!      token among the last `repeat_last_n` generated ones has a positive logit divided by
//!      `r`, a negative one multiplied by `r`;
//!    - presence and frequency penalties (OpenAI semantics, over the whole completion so far):
//!      `logit -= frequency_penalty · count + presence_penalty · [count > 0]`;
//! 2. **temperature**: probabilities softmax(logits / T); T = 0 is greedy (the argmax of the
//!    penalized logits) and skips the filters;
//! 3. **top-k**: only the k most likely tokens are kept;
//! 4. **top-p**: of those, the smallest set of most likely tokens whose (renormalized) mass
//!    reaches p;
//! 5. **min-p**: of those, the tokens at least `min_p` times as likely as the most likely one;
//! 6. a uniform draw mapped through the cumulative distribution of the survivors.
//!
//! This is the order of vLLM and Hugging Face `transformers` (temperature before the
//! filters); llama.cpp applies temperature last, which changes what top-p and min-p keep at
//! T ≠ 1. Penalties see only generated tokens, never the prompt (llama.cpp's server also
//! penalizes the prompt's last tokens): a revision may reuse the words of the text it revises.
//! Every option at its neutral value (top-k 0, min-p 0, penalties 1 and 0) leaves the
//! arithmetic and the random draws exactly as they were before these options existed.

use std::collections::BTreeMap;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Sampling settings of one generation request.
///
/// The local engine applies them in the order of this module's docs: penalties, temperature,
/// top-k, top-p, min-p. Every option has a neutral value that turns it off; the OpenAI
/// backend sends the options outside the chat-completions standard only when set away from it.
///
/// The defaults add one thing to plain temperature/top-p sampling: a repetition penalty of 1.1
/// over the last 64 generated tokens (llama.cpp's long-standing default). On the first 40
/// red-team dev prompts with the quickstart's revise settings it took the share of texts that
/// loop (a 3-word phrase 3 or more times, `scripts/loop-share.sh`) from 25.8 % to 0 %, where
/// 1.05 left 3.3 % and frequency penalty 0.5 alone 0.8 % (see docs/models.md, Sampling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling threshold in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// Drop tokens less than `min_p` times as likely as the most likely one, in [0, 1];
    /// 0 disables it.
    pub min_p: f64,
    /// Repetition penalty (CTRL, llama.cpp's `repeat_penalty`), > 0: the logits of tokens among
    /// the last `repeat_last_n` generated ones are divided by it when positive and multiplied
    /// by it when negative; 1 disables it.
    pub repetition_penalty: f64,
    /// How many of the last generated tokens the repetition penalty looks at; 0 disables it.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token the completion already holds (OpenAI
    /// semantics), in [-2, 2]; 0 disables it.
    pub presence_penalty: f64,
    /// Subtracted from a token's logit once per occurrence in the completion so far (OpenAI
    /// semantics), in [-2, 2]; 0 disables it.
    pub frequency_penalty: f64,
    /// Maximum number of new tokens.
    pub max_tokens: usize,
    /// Generation stops when any of these strings appears; it is not part of the output.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.1,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            max_tokens: 128,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Whether any logit penalty is set away from its neutral value.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// Rejects values the sampler cannot use, naming the field.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("sampling: {what}"))
            }
        };
        check(self.temperature >= 0.0, "temperature must not be negative")?;
        check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p must lie in (0, 1]",
        )?;
        check(
            (0.0..=1.0).contains(&self.min_p),
            "min_p must lie in [0, 1]",
        )?;
        check(
            self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite(),
            "repetition_penalty must be positive (1 disables it)",
        )?;
        check(
            (-2.0..=2.0).contains(&self.presence_penalty)
                && (-2.0..=2.0).contains(&self.frequency_penalty),
            "presence_penalty and frequency_penalty must lie in [-2, 2]",
        )
    }
}

/// A seeded sampler for one sequence; the same seed and logits give the same tokens on every
/// machine. It remembers the tokens it picked, which the penalties of later steps use.
pub struct Sampler {
    rng: ChaCha8Rng,
    params: SamplingParams,
    /// Tokens picked so far, in order.
    history: Vec<u32>,
    /// Penalized copy of the logits (reused between steps).
    scratch: Vec<f32>,
}

impl Sampler {
    pub fn new(params: &SamplingParams, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            params: params.clone(),
            history: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Picks the next token from raw logits and records it for the penalties.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let u = self.rng.random();
        let p = &self.params;
        let token = if p.has_penalties() {
            self.scratch.clear();
            self.scratch.extend_from_slice(logits);
            apply_penalties(&mut self.scratch, &self.history, &Penalties::of(p));
            pick(&self.scratch, &Filters::of(p), u)
        } else {
            pick(logits, &Filters::of(p), u)
        };
        self.history.push(token);
        token
    }
}

/// The penalties of step 1 (see the module docs); each is off at its neutral value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    /// Repetition penalty, > 0; 1 is off.
    pub repetition: f64,
    /// How many of the last generated tokens the repetition penalty looks at; 0 is off.
    pub last_n: usize,
    /// Subtracted once from the logit of every token generated before; 0 is off.
    pub presence: f64,
    /// Subtracted from a token's logit once per earlier occurrence; 0 is off.
    pub frequency: f64,
}

impl Penalties {
    pub fn of(p: &SamplingParams) -> Self {
        Self {
            repetition: p.repetition_penalty,
            last_n: p.repeat_last_n,
            presence: p.presence_penalty,
            frequency: p.frequency_penalty,
        }
    }
}

/// Applies `penalties` to `logits` given the tokens generated so far (`history`, oldest first).
/// Tokens outside the vocabulary are ignored.
pub fn apply_penalties(logits: &mut [f32], history: &[u32], penalties: &Penalties) {
    let Penalties {
        repetition,
        last_n,
        presence,
        frequency,
    } = *penalties;
    if repetition != 1.0 && last_n > 0 {
        let mut recent: Vec<u32> = history[history.len().saturating_sub(last_n)..].to_vec();
        recent.sort_unstable();
        recent.dedup();
        for id in recent {
            if let Some(l) = logits.get_mut(id as usize) {
                let v = *l as f64;
                *l = if v > 0.0 {
                    v / repetition
                } else {
                    v * repetition
                } as f32;
            }
        }
    }
    if presence != 0.0 || frequency != 0.0 {
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for &id in history {
            *counts.entry(id).or_default() += 1;
        }
        for (id, count) in counts {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = (*l as f64 - frequency * count as f64 - presence) as f32;
            }
        }
    }
}

/// The temperature and filters of steps 2–5 (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Filters {
    /// 0 (or below) is greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 is off.
    pub top_k: usize,
    /// Nucleus threshold in (0, 1]; 1 is off.
    pub top_p: f64,
    /// Relative threshold in [0, 1]; 0 is off.
    pub min_p: f64,
}

impl Filters {
    pub fn of(p: &SamplingParams) -> Self {
        Self {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
        }
    }
}

/// Picks a token with temperature and top-p only, given a uniform draw `u` in [0, 1): what
/// PPO samples rollouts with, so their log-probabilities are those of softmax(logits / T).
pub fn sample_token(logits: &[f32], temperature: f64, top_p: f64, u: f64) -> u32 {
    pick(
        logits,
        &Filters {
            temperature,
            top_k: 0,
            top_p,
            min_p: 0.0,
        },
        u,
    )
}

/// Picks a token given a uniform draw `u` in [0, 1): steps 2–6 of the module docs.
///
/// Ties between equally likely tokens go to the lower id, so the result does not depend on the
/// sort's implementation.
pub fn pick(logits: &[f32], f: &Filters, u: f64) -> u32 {
    if f.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / f.temperature).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if f.top_k > 0 {
        probs.truncate(f.top_k);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut keep = probs.len();
    if f.top_p < 1.0 {
        let mut acc = 0.0;
        for (k, p) in probs.iter().enumerate() {
            acc += p.1 / total;
            if acc >= f.top_p {
                keep = k + 1;
                break;
            }
        }
    }
    if f.min_p > 0.0 {
        // probs[0] is the most likely token; the ratio needs no normalization.
        let floor = f.min_p * probs.first().map_or(0.0, |p| p.1);
        keep = probs[..keep].iter().take_while(|p| p.1 >= floor).count();
    }
    let probs = &probs[..keep];
    let kept: f64 = probs.iter().map(|p| p.1).sum();
    let target = u * kept;
    let mut acc = 0.0;
    for &(id, p) in probs {
        acc += p;
        if acc > target {
            return id;
        }
    }
    probs.last().map_or(0, |p| p.0)
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(temperature: f64, top_k: usize, top_p: f64, min_p: f64) -> Filters {
        Filters {
            temperature,
            top_k,
            top_p,
            min_p,
        }
    }

    /// Every option of this module neutral.
    fn plain() -> SamplingParams {
        SamplingParams {
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            ..SamplingParams::default()
        }
    }

    #[track_caller]
    fn assert_close(got: &[f32], want: &[f32]) {
        assert!(
            got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{got:?} != {want:?}"
        );
    }

    const OFF: Penalties = Penalties {
        repetition: 1.0,
        last_n: 64,
        presence: 0.0,
        frequency: 0.0,
    };

    #[test]
    fn greedy_takes_argmax() {
        assert_eq!(sample_token(&[0.1, 2.0, 1.0], 0.0, 1.0, 0.99), 1);
    }

    #[test]
    fn cumulative_mapping() {
        // logits ln(1), ln(2), ln(1) at T=1 -> probs .25 .5 .25, sorted: id1 (.5), id0 (.25), id2 (.25).
        let l = [0.0f32, 2f32.ln(), 0.0];
        assert_eq!(sample_token(&l, 1.0, 1.0, 0.10), 1);
        assert_eq!(sample_token(&l, 1.0, 1.0, 0.60), 0);
        assert_eq!(sample_token(&l, 1.0, 1.0, 0.90), 2);
    }

    #[test]
    fn top_p_drops_tail() {
        // With top_p = 0.5 only id1 (mass .5) survives, whatever u is.
        let l = [0.0f32, 2f32.ln(), 0.0];
        for u in [0.0, 0.3, 0.99] {
            assert_eq!(sample_token(&l, 1.0, 0.5, u), 1);
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_multiplies_negative() {
        // History [1, 3, 4, 1] with last_n 3 sees {3, 4, 1}; token 1 counts once however
        // often it occurs. 2.6/1.3 = 2, -1.3*1.3 = -1.69, 0*1.3 = 0; ids 0 and 2 untouched.
        let mut l = [1.0f32, 2.6, -0.5, -1.3, 0.0];
        let p = Penalties {
            repetition: 1.3,
            last_n: 3,
            ..OFF
        };
        apply_penalties(&mut l, &[1, 3, 4, 1], &p);
        assert_close(&l, &[1.0, 2.0, -0.5, -1.69, 0.0]);
        // A window of 2 sees only {4, 1}: id 3 keeps -1.3.
        let mut l = [1.0f32, 2.6, -0.5, -1.3, 0.0];
        apply_penalties(&mut l, &[1, 3, 4, 1], &Penalties { last_n: 2, ..p });
        assert_close(&l, &[1.0, 2.0, -0.5, -1.3, 0.0]);
    }

    #[test]
    fn presence_and_frequency_follow_openai() {
        // History [2, 2, 0, 2] (all of it, no window): counts id0 1, id2 3.
        // id0: 1.0 - 0.25*1 - 0.5 = 0.25; id2: 3.0 - 0.25*3 - 0.5 = 1.75.
        let mut l = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        let p = Penalties {
            presence: 0.5,
            frequency: 0.25,
            ..OFF
        };
        apply_penalties(&mut l, &[2, 2, 0, 2], &p);
        assert_eq!(l, [0.25, 2.0, 1.75, 4.0, 5.0]);
    }

    #[test]
    fn penalties_compose_and_ignore_ids_outside_vocab() {
        // Repetition first (id1: 2.6/1.3 = 2), then frequency 0.5 (2 - 0.5 = 1.5); id 9 is
        // not in the 5-token vocabulary.
        let mut l = [1.0f32, 2.6, 0.0, 0.0, 0.0];
        let p = Penalties {
            repetition: 1.3,
            frequency: 0.5,
            ..OFF
        };
        apply_penalties(&mut l, &[1, 9], &p);
        assert_close(&l, &[1.0, 1.5, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn top_k_keeps_the_k_most_likely() {
        // logits ln 4, ln 3, ln 2, ln 1, ln 1 -> probs 4/11, 3/11, 2/11, 1/11, 1/11.
        // Top-2 keeps id0 (4/7 of the kept mass) and id1 (3/7): u < 4/7 ≈ .571 gives id0.
        let l = [4f32.ln(), 3f32.ln(), 2f32.ln(), 0.0, 0.0];
        let f = filters(1.0, 2, 1.0, 0.0);
        assert_eq!(pick(&l, &f, 0.56), 0);
        assert_eq!(pick(&l, &f, 0.58), 1);
        assert_eq!(pick(&l, &f, 0.999), 1);
        // Without top-k, u = .999 lands on the last token (ties by id: id4).
        assert_eq!(pick(&l, &filters(1.0, 0, 1.0, 0.0), 0.999), 4);
    }

    #[test]
    fn top_p_counts_mass_after_top_k() {
        // Top-3 of the above: 4/9, 3/9, 2/9. top_p .7: 4/9 = .444 < .7, 7/9 = .778 >= .7,
        // so ids 0 and 1 survive (without top-k the cut is also after id1: 7/11 = .636 < .7,
        // 9/11 = .818, keeping id2 too).
        let l = [4f32.ln(), 3f32.ln(), 2f32.ln(), 0.0, 0.0];
        assert_eq!(pick(&l, &filters(1.0, 3, 0.7, 0.0), 0.999), 1);
        assert_eq!(pick(&l, &filters(1.0, 0, 0.7, 0.0), 0.999), 2);
    }

    #[test]
    fn min_p_keeps_tokens_near_the_top() {
        // Probs proportional to 10, 5, 2, 1, 0.5. min_p 0.08 keeps p >= 0.8 (ids 0-3),
        // min_p 0.25 keeps p >= 2.5 (ids 0-1).
        let l = [10f32.ln(), 5f32.ln(), 2f32.ln(), 0.0, 0.5f32.ln()];
        assert_eq!(pick(&l, &filters(1.0, 0, 1.0, 0.08), 0.999), 3);
        assert_eq!(pick(&l, &filters(1.0, 0, 1.0, 0.25), 0.999), 1);
        // Kept mass 15 at min_p .25: u = .66 -> 9.9 < 10 -> id0; u = .67 -> 10.05 -> id1.
        assert_eq!(pick(&l, &filters(1.0, 0, 1.0, 0.25), 0.66), 0);
        assert_eq!(pick(&l, &filters(1.0, 0, 1.0, 0.25), 0.67), 1);
    }

    #[test]
    fn min_p_sees_temperature_scaled_probabilities() {
        // At T = 0.5 the ratios square: 100, 25, 4, 1, 0.25. min_p 0.08 now keeps p >= 8,
        // ids 0-1 only (at T = 1 it kept ids 0-3, see above).
        let l = [10f32.ln(), 5f32.ln(), 2f32.ln(), 0.0, 0.5f32.ln()];
        assert_eq!(pick(&l, &filters(0.5, 0, 1.0, 0.08), 0.999), 1);
    }

    #[test]
    fn greedy_follows_penalized_logits() {
        // id1 leads (2.6) until generated once: 2.6 / 1.3 = 2.0 < 2.5 (id2).
        let params = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 1.3,
            repeat_last_n: 64,
            ..plain()
        };
        let mut s = Sampler::new(&params, 0);
        let l = [1.0f32, 2.6, 2.5, -1.3, 0.0];
        assert_eq!(s.sample(&l), 1);
        assert_eq!(s.sample(&l), 2);
        // Both penalized now: 2.0 vs 2.5/1.3 = 1.92; id1 is back.
        assert_eq!(s.sample(&l), 1);
    }

    #[test]
    fn neutral_options_change_nothing() {
        // The same seed through the plain path and through every option set to its neutral
        // value gives the same tokens on random logits, draw by draw.
        let logits: Vec<Vec<f32>> = (0..200)
            .map(|s| {
                let mut r = ChaCha8Rng::seed_from_u64(s);
                (0..50).map(|_| r.random::<f32>() * 8.0 - 4.0).collect()
            })
            .collect();
        for (temperature, top_p) in [(0.7, 0.9), (1.0, 0.95), (1.3, 1.0), (0.0, 1.0)] {
            let neutral = SamplingParams {
                temperature,
                top_p,
                ..plain()
            };
            assert!(!neutral.has_penalties());
            let mut a = Sampler::new(&neutral, 11);
            let mut b = ChaCha8Rng::seed_from_u64(11);
            for l in &logits {
                assert_eq!(a.sample(l), sample_token(l, temperature, top_p, b.random()));
            }
            // Penalty options that are on but cannot change a logit take the other path and
            // still agree.
            let idle = SamplingParams {
                repeat_last_n: 0,
                repetition_penalty: 1.5,
                ..neutral.clone()
            };
            assert!(idle.has_penalties());
            let (mut a, mut c) = (Sampler::new(&neutral, 3), Sampler::new(&idle, 3));
            for l in &logits {
                assert_eq!(a.sample(l), c.sample(l));
            }
        }
    }

    #[test]
    fn frequencies_follow_softmax() {
        // probs .25/.5/.25: 20k draws stay within 1.5 points of each.
        let l = [0.0f32, 2f32.ln(), 0.0];
        let mut s = Sampler::new(
            &SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                ..plain()
            },
            7,
        );
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[s.sample(&l) as usize] += 1;
        }
        let f: Vec<f64> = counts.iter().map(|&c| c as f64 / 20_000.0).collect();
        assert!(
            (f[0] - 0.25).abs() < 0.015 && (f[1] - 0.5).abs() < 0.015,
            "{f:?}"
        );
    }
}
