//! The PPO loop for language models (Ziegler et al. 2019; Ouyang et al. 2022; the RL stage of
//! Bai et al. 2022 §4): sample responses from the policy, score them with a reward model,
//! penalize each token's KL to the frozen reference (the SFT model), estimate advantages with
//! a value head and GAE, and take several clipped-objective updates per batch of rollouts.
//!
//! With a critic-free [`AdvantageEstimator`] (GRPO, RLOO, REINFORCE) a step samples
//! `group_size` responses per prompt, gives every token of a response its group-relative
//! advantage ([`group_advantages`]), trains no value head, and puts the KL either in the score
//! or in the loss ([`k3_kl_loss`]); the clipped ratio, guards, logs and checkpoints are PPO's.
//!
//! Every random draw of step `s` comes from a generator seeded by `(seed, s, purpose)` and the
//! prompt order of an epoch is a pure function of `(seed, epoch)`, so the checkpoint (weights,
//! value head, optimizer moments, β, step, prompt cursor) is all a resumed run needs to
//! continue the same curve.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::advantage::{group_advantages, k3_per_token, sequence_returns, AdvantageEstimator};
use super::data::{split_by_tokens, Batch, TokenizedExample};
use super::model::{CausalLm, Llama};
use super::optim::{AdamW, Gradients};
use super::params::ParamStore;
use super::ppo_config::{PpoConfig, PpoStepStats};
use super::ppo_math::{
    clipped_surrogate, explained_variance, gae, kl_per_token, token_rewards, token_weights,
    value_loss, whiten_ragged,
};
use super::ppo_rollout::{generate, split_rows, token_outputs, Rollout, RolloutSampling};
use super::resume;
use super::reward::RewardHead;
use super::trainer::epoch_order;
use super::{model_from_weights, LlamaConfig, NonFiniteError, Weights};
use crate::artifacts::OPTIMIZER_FILE;
use crate::model_files::checkpoint::{self, ExtraFiles};
use crate::model_files::weights::dtype_device;

/// Value-head file of a PPO checkpoint.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";

/// Scores finished responses (the reward model, or a synthetic reward in tests).
pub trait Scorer {
    /// One score per rollout, in order; `None` for a response that could not be scored (its
    /// feedback prompt overflowed the feedback model's context): it gets no advantage and is
    /// left out of the loss.
    fn score(&mut self, rollouts: &[Rollout]) -> Result<Vec<Option<f64>>>;
}

/// Where a PPO run stands; saved as every trainer's state ([`resume::write_state`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoState {
    pub step: usize,
    /// Epoch over the prompt set and the index of the next prompt in its order.
    pub epoch: usize,
    pub cursor: usize,
    /// Current KL coefficient.
    pub beta: f64,
    /// FNV-1a hash of the tokenized prompts, checked on resume.
    pub prompts_fingerprint: String,
    /// What the rewards and the KL come from ([`PpoData::reward_sources`]), checked on
    /// resume; null in checkpoints written before it was recorded (not checked then).
    #[serde(default)]
    pub reward_sources: serde_json::Value,
    pub history: Vec<PpoStepStats>,
    pub config: PpoConfig,
}

/// One step's statistics and the rollouts it trained on.
pub struct PpoStep {
    pub stats: PpoStepStats,
    pub rollouts: Vec<Rollout>,
    /// The scorer's scores (`None`: unscored, not trained on).
    pub scores: Vec<Option<f64>>,
}

/// The PPO trainer (see the module docs).
pub struct PpoTrainer {
    cfg: PpoConfig,
    params: ParamStore,
    policy: Llama,
    reference: Llama,
    /// The critic, for GAE only.
    value_head: Option<RewardHead>,
    vars: Vec<(String, Var)>,
    opt: AdamW,
    prompts: Vec<Vec<u32>>,
    stop_ids: Vec<u32>,
    ptx: Vec<TokenizedExample>,
    state: PpoState,
    device: Device,
}

/// The data a run trains on, besides the weights.
pub struct PpoData {
    /// Tokenized prompts (chat template applied, generation prompt open).
    pub prompts: Vec<Vec<u32>>,
    /// Tokens that end a response.
    pub stop_ids: Vec<u32>,
    /// SFT examples for PPO-ptx (may be empty when `ptx_coef` is 0).
    pub ptx: Vec<TokenizedExample>,
    /// What the rewards and the KL come from, as the caller identifies them (reward-model
    /// and reference hashes, reward weights, feedback model): saved in the checkpoint, and a
    /// resumed run whose sources differ is refused, naming each difference.
    pub reward_sources: serde_json::Value,
}

impl PpoTrainer {
    /// A fresh run: the policy starts from `weights` (f32), the reference is `reference`.
    pub fn new(
        model_config: &LlamaConfig,
        weights: Weights,
        reference: &Weights,
        data: PpoData,
        cfg: PpoConfig,
    ) -> Result<Self> {
        cfg.validate()?;
        let (_, device) = dtype_device(&weights)?;
        let params = ParamStore::fresh(model_config, weights, cfg.trainable.clone(), cfg.seed)?;
        let head = match cfg.advantage.uses_critic() {
            true => Some(RewardHead::init(
                model_config.hidden_size,
                cfg.seed ^ 0x7a1e,
                &device,
            )?),
            false => None,
        };
        let state = PpoState {
            step: 0,
            epoch: 0,
            cursor: 0,
            beta: cfg.kl_coef,
            prompts_fingerprint: prompts_fingerprint(&data.prompts),
            reward_sources: data.reward_sources.clone(),
            history: Vec::new(),
            config: cfg.clone(),
        };
        let opt = AdamW::new(cfg.adamw());
        Self::assemble(model_config, params, head, opt, reference, data, state)
    }

    /// Continues the run saved in checkpoint folder `dir` on the same prompts, with the same
    /// settings `cfg` but for its length ([`resume::check_settings`]).
    pub fn resume(dir: &Path, reference: &Weights, data: PpoData, cfg: PpoConfig) -> Result<Self> {
        let (_, device) = dtype_device(reference)?;
        let state: PpoState = resume::read_state(dir)?;
        ensure!(
            state.prompts_fingerprint == prompts_fingerprint(&data.prompts),
            "{}: the prompts differ from those of the checkpoint",
            dir.display()
        );
        resume::check_settings(dir, &state.config, &cfg)?;
        check_reward_sources(dir, &state.reward_sources, &data.reward_sources)?;
        let state = PpoState {
            config: cfg.clone(),
            reward_sources: data.reward_sources.clone(),
            ..state
        };
        let params = ParamStore::restore(dir, cfg.trainable.clone(), &device)?;
        let model_config = params.config().clone();
        let head = match cfg.advantage.uses_critic() {
            true => Some(RewardHead::load_file(
                &dir.join(VALUE_HEAD_FILE),
                model_config.hidden_size,
                &device,
            )?),
            false => None,
        };
        let opt = AdamW::load(cfg.adamw(), &dir.join(OPTIMIZER_FILE), &device)?;
        Self::assemble(&model_config, params, head, opt, reference, data, state)
    }

    fn assemble(
        model_config: &LlamaConfig,
        params: ParamStore,
        value_head: Option<RewardHead>,
        opt: AdamW,
        reference: &Weights,
        data: PpoData,
        state: PpoState,
    ) -> Result<Self> {
        ensure!(!data.prompts.is_empty(), "PPO needs at least one prompt");
        let cfg = state.config.clone();
        ensure!(
            cfg.ptx_coef == 0.0 || !data.ptx.is_empty(),
            "ptx_coef is {} but no SFT data was given for PPO-ptx",
            cfg.ptx_coef
        );
        let longest = data.prompts.iter().map(Vec::len).max().unwrap_or(0);
        ensure!(
            longest + cfg.max_new_tokens <= model_config.max_position_embeddings,
            "a prompt of {longest} tokens plus max_new_tokens {} exceeds the model's {} positions",
            cfg.max_new_tokens,
            model_config.max_position_embeddings
        );
        let policy = params.training_model(cfg.dtype)?;
        let reference =
            model_from_weights(model_config, reference)?.with_compute_dtype(policy.dtype())?;
        let mut vars = params.vars().to_vec();
        if let Some(head) = &value_head {
            vars.extend(
                head.vars()
                    .into_iter()
                    .map(|(n, v)| (format!("value_head.{n}"), v)),
            );
        }
        let device = policy.device().clone();
        Ok(Self {
            cfg,
            params,
            policy,
            reference,
            value_head,
            vars,
            opt,
            prompts: data.prompts,
            stop_ids: data.stop_ids,
            ptx: data.ptx,
            state,
            device,
        })
    }

    /// The same trainer whose policy keeps every activation for backward (the plain
    /// computation that checkpointing must reproduce).
    #[cfg(test)]
    pub(super) fn without_checkpointing(mut self) -> Result<Self> {
        self.policy = self.params.build_model()?;
        Ok(self)
    }

    pub fn state(&self) -> &PpoState {
        &self.state
    }

    pub fn config(&self) -> &PpoConfig {
        &self.cfg
    }

    /// The policy being trained.
    pub fn policy(&self) -> &Llama {
        &self.policy
    }

    pub fn is_done(&self) -> bool {
        self.state.step >= self.cfg.steps
    }

    fn rng(&self, step: usize, purpose: u64) -> ChaCha8Rng {
        let key = self.cfg.seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ purpose;
        ChaCha8Rng::seed_from_u64(key)
    }

    /// Responses sampled per prompt: `group_size` for the critic-free estimators, else 1.
    fn group(&self) -> usize {
        match self.cfg.advantage.uses_critic() {
            true => 1,
            false => self.cfg.group_size,
        }
    }

    /// The prompts of the next step, in the epoch order of the prompt set; each prompt of a
    /// group is listed `group` times in a row.
    fn next_prompts(&mut self) -> Vec<usize> {
        let n = self.prompts.len();
        let group = self.group();
        let mut out = Vec::with_capacity(self.cfg.rollouts);
        let mut order = epoch_order(self.cfg.seed, self.state.epoch, n);
        while out.len() < self.cfg.rollouts {
            out.extend(std::iter::repeat_n(order[self.state.cursor], group));
            self.state.cursor += 1;
            if self.state.cursor == n {
                self.state.epoch += 1;
                self.state.cursor = 0;
                order = epoch_order(self.cfg.seed, self.state.epoch, n);
            }
        }
        out
    }

    /// Samples responses to the given prompts from the current policy.
    pub fn sample(&self, prompts: &[usize], rng: &mut ChaCha8Rng) -> Result<Vec<Rollout>> {
        let sampling = RolloutSampling {
            temperature: self.cfg.temperature,
            top_p: self.cfg.top_p,
            max_new_tokens: self.cfg.max_new_tokens,
        };
        prompts
            .iter()
            .map(|&p| {
                let ids = &self.prompts[p];
                let (response_ids, ended) =
                    generate(&self.policy, ids, &self.stop_ids, sampling, rng)?;
                Ok(Rollout {
                    prompt: p,
                    prompt_ids: ids.clone(),
                    response_ids,
                    ended,
                })
            })
            .collect()
    }

    /// One PPO step: rollouts, scores, advantages, `ppo_epochs` passes of updates. Responses
    /// the scorer could not score get no advantage and no update; a step none of whose
    /// responses was scored is an error.
    pub fn step(&mut self, scorer: &mut dyn Scorer) -> Result<PpoStep> {
        let started = Instant::now();
        let step = self.state.step + 1;
        let lr = self.cfg.schedule().lr(step);
        let prompts = self.next_prompts();
        let rollouts = self.sample(&prompts, &mut self.rng(step, 1))?;
        let scores = scorer.score(&rollouts).context("scoring the rollouts")?;
        ensure!(
            scores.len() == rollouts.len(),
            "the scorer returned {} scores for {} responses",
            scores.len(),
            rollouts.len()
        );
        if let Some((i, s)) = scores
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.filter(|s| !s.is_finite()).map(|s| (i, s)))
        {
            return Err(self.non_finite(step, "reward-model score", s))
                .with_context(|| format!("response {i} of step {step}"));
        }
        // The responses trained on: those with a score.
        let scored: Vec<usize> = (0..rollouts.len())
            .filter(|&i| scores[i].is_some())
            .collect();
        ensure!(
            !scored.is_empty(),
            "step {step}: none of the {} responses could be scored (every feedback prompt              overflowed the feedback model's context): shorten max_prompt_tokens or              max_new_tokens, or use a feedback model with a longer context",
            rollouts.len()
        );
        let old = self.rollout_time_outputs(&rollouts)?;
        let lens: Vec<usize> = rollouts.iter().map(|r| r.response_ids.len()).collect();

        let beta = self.state.beta;
        let mut kls = Vec::with_capacity(rollouts.len());
        let mut rewards = Vec::with_capacity(rollouts.len());
        // With the KL as a loss term the reward is the score alone.
        let reward_beta = if self.cfg.kl_in_loss { 0.0 } else { beta };
        for (i, r) in rollouts.iter().enumerate() {
            let kl = kl_per_token(&old.logp[i], &old.logp_ref[i], self.cfg.kl_estimator);
            let penalty = match (r.ended, self.cfg.no_eos_penalty) {
                (false, Some(p)) => p,
                _ => 0.0,
            };
            kls.push(kl.iter().sum::<f64>());
            rewards.push(scores[i].map(|s| token_rewards(s - penalty, &kl, reward_beta)));
        }
        let totals: Vec<f64> = rewards
            .iter()
            .flatten()
            .map(|rw| rw.iter().sum::<f64>())
            .collect();
        let flat = |rows: &[Vec<f64>]| rows.iter().flatten().copied().collect::<Vec<f64>>();
        let (advantages, returns, explained) = match self.cfg.advantage {
            AdvantageEstimator::Gae => {
                // Unscored rows (none in practice: the reward model scores every response)
                // keep empty advantages and returns; they are not trained on.
                let mut kept: Vec<Vec<f64>> = rewards.iter().flatten().cloned().collect();
                if self.cfg.whiten_rewards {
                    kept = whiten_ragged(&kept, true);
                }
                let (mut advantages, mut returns) = (
                    vec![Vec::new(); rollouts.len()],
                    vec![Vec::new(); rollouts.len()],
                );
                let mut values = Vec::new();
                for (&i, rw) in scored.iter().zip(&kept) {
                    let (a, r) = gae(rw, &old.values[i], self.cfg.gamma, self.cfg.lambda);
                    advantages[i] = a;
                    returns[i] = r;
                    values.push(old.values[i].clone());
                }
                let explained = explained_variance(&flat(&values), &flat(&returns));
                let whitened = whiten_ragged(&gather_rows(&advantages, &scored), false);
                for (&i, a) in scored.iter().zip(whitened) {
                    advantages[i] = a;
                }
                (advantages, returns, explained)
            }
            estimator => {
                let seq_returns = sequence_returns(&rewards, self.cfg.whiten_rewards);
                let seq = group_advantages(
                    &seq_returns,
                    self.group(),
                    estimator,
                    self.cfg.scale_rewards,
                );
                let per_token = seq.iter().zip(&lens).map(|(&a, &n)| vec![a; n]).collect();
                (per_token, Vec::new(), None)
            }
        };

        let mut acc = UpdateTotals::default();
        for epoch in 0..self.cfg.ppo_epochs {
            let mut order = scored.clone();
            order.shuffle(&mut self.rng(step, 100 + epoch as u64));
            for (mb_index, mb) in order.chunks(self.cfg.minibatch).enumerate() {
                let part = Minibatch {
                    rollouts: mb.iter().map(|&i| &rollouts[i]).collect(),
                    logp_old: gather(&old.logp, mb),
                    logp_ref: gather(&old.logp_ref, mb),
                    values_old: gather(&old.values, mb),
                    advantages: gather(&advantages, mb),
                    returns: gather(&returns, mb),
                };
                let ptx_pick = (step, epoch, mb_index);
                acc.add(self.update(step, lr, &part, ptx_pick)?);
            }
        }

        if let Some(ctrl) = self.cfg.adaptive() {
            self.state.beta = ctrl.update(beta, mean(&kls), rollouts.len());
        }
        let n = rollouts.len() as f64;
        let present: Vec<f64> = scores.iter().flatten().copied().collect();
        let stats = PpoStepStats {
            step,
            score: mean(&present),
            reward: mean(&totals),
            unscored: rollouts.len() - scored.len(),
            kl: mean(&kls),
            beta,
            entropy: mean(&flat(&old.entropy)),
            clip_frac: acc.mean(acc.clip_frac),
            approx_kl: acc.mean(acc.approx_kl),
            policy_loss: acc.mean(acc.policy_loss),
            value_loss: acc.mean(acc.value_loss),
            value_clip_frac: acc.mean(acc.value_clip_frac),
            explained_variance: explained,
            response_len: lens.iter().sum::<usize>() as f64 / n,
            ended: rollouts.iter().filter(|r| r.ended).count() as f64 / n,
            ptx_loss: (self.cfg.ptx_coef > 0.0).then(|| acc.mean(acc.ptx_loss)),
            lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        self.state.step = step;
        self.state.history.push(stats.clone());
        Ok(PpoStep {
            stats,
            rollouts,
            scores,
        })
    }

    /// Log-probabilities (policy and reference), values and entropies at rollout time.
    fn rollout_time_outputs(&self, rollouts: &[Rollout]) -> Result<OldOutputs> {
        let mut out = OldOutputs::default();
        let units: Vec<(usize, usize)> = rollouts
            .iter()
            .map(|r| (1, r.prompt_ids.len() + r.response_ids.len()))
            .collect();
        let mut parts = Vec::new();
        for start in (0..rollouts.len()).step_by(self.cfg.minibatch) {
            let end = (start + self.cfg.minibatch).min(rollouts.len());
            let within = split_by_tokens(&units[start..end], self.cfg.max_batch_tokens);
            parts.extend(within.into_iter().map(|p| start + p.start..start + p.end));
        }
        for part in parts {
            let chunk = &rollouts[part];
            let refs: Vec<&Rollout> = chunk.iter().collect();
            let lens: Vec<usize> = chunk.iter().map(|r| r.response_ids.len()).collect();
            let t = self.cfg.temperature;
            let head = self.value_head.as_ref();
            let pol = token_outputs(&self.policy, head, &refs, t, true)?;
            let reference = token_outputs(&self.reference, None, &refs, t, false)?;
            out.logp.extend(split_rows(&pol.logp.detach(), &lens)?);
            out.logp_ref
                .extend(split_rows(&reference.logp.detach(), &lens)?);
            if let Some(values) = pol.values {
                out.values.extend(split_rows(&values.detach(), &lens)?);
            }
            let entropy = pol.entropy.context("entropy output")?.detach();
            out.entropy.extend(split_rows(&entropy, &lens)?);
        }
        Ok(out)
    }

    /// One optimizer update on a minibatch (plus an SFT batch for PPO-ptx). The minibatch
    /// runs in parts of at most `max_batch_tokens` padded tokens. The policy loss (and the
    /// k3 KL term) is `Σ w_t·ℓ_t` with the `loss_aggregation` weights of the whole minibatch
    /// ([`token_weights`]), the value loss a token mean over it, so the parts' losses and
    /// gradients add up to the whole update.
    fn update(
        &mut self,
        step: usize,
        lr: f64,
        mb: &Minibatch,
        ptx_pick: (usize, usize, usize),
    ) -> Result<UpdateStats> {
        let t = self.cfg.temperature;
        let vec = |v: &[f64]| {
            let v32: Vec<f32> = v.iter().map(|x| *x as f32).collect();
            Tensor::from_vec(v32, v.len(), &self.device)
        };
        let units: Vec<(usize, usize)> = mb
            .rollouts
            .iter()
            .map(|r| (1, r.prompt_ids.len() + r.response_ids.len()))
            .collect();
        let lens: Vec<usize> = mb.rollouts.iter().map(|r| r.response_ids.len()).collect();
        let weights = token_weights(&lens, self.cfg.loss_aggregation, self.cfg.max_new_tokens);
        // Response tokens before each rollout: a part's slice of the per-token inputs.
        let mut offsets = vec![0];
        for n in &lens {
            offsets.push(offsets.last().copied().unwrap_or(0) + n);
        }
        let total = offsets[mb.rollouts.len()].max(1) as f64;
        let mut stats = UpdateStats::default();
        let mut grads = Gradients::new();
        let mut new_logp = Vec::with_capacity(mb.logp_old.len());
        for part in split_by_tokens(&units, self.cfg.max_batch_tokens) {
            let tokens = offsets[part.start]..offsets[part.end];
            let share = tokens.len() as f64 / total;
            let new = token_outputs(
                &self.policy,
                self.value_head.as_ref(),
                &mb.rollouts[part],
                t,
                false,
            )?;
            let w = vec(&weights[tokens.clone()])?;
            let (per_token, was_clipped) = clipped_surrogate(
                &new.logp,
                &vec(&mb.logp_old[tokens.clone()])?,
                &vec(&mb.advantages[tokens.clone()])?,
                self.cfg.clip,
            )?;
            let pl = (per_token * &w)?.sum_all()?;
            stats.policy_loss += scalar(&pl)?;
            stats.clip_frac += scalar(&was_clipped.mean_all()?)? * share;
            let mut loss = pl;
            if let Some(values) = &new.values {
                let mask = Tensor::ones(tokens.len(), DType::F32, &self.device)?;
                let (vl, frac) = value_loss(
                    values,
                    &vec(&mb.values_old[tokens.clone()])?,
                    &vec(&mb.returns[tokens.clone()])?,
                    &mask,
                    self.cfg.value_clip,
                )?;
                stats.value_loss += scalar(&vl)? * share;
                stats.value_clip_frac += frac * share;
                loss = (loss + (vl * (self.cfg.vf_coef * share))?)?;
            }
            if self.cfg.kl_in_loss {
                let k3 = k3_per_token(&new.logp, &vec(&mb.logp_ref[tokens])?)?;
                loss = (loss + ((k3 * &w)?.sum_all()? * self.state.beta)?)?;
            }
            let value = scalar(&loss)?;
            if !value.is_finite() {
                return Err(self.non_finite(step, "PPO loss", value));
            }
            new_logp.extend(new.logp.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?);
            grads.accumulate(&self.vars, self.policy.backward(&loss)?)?;
        }
        if self.cfg.ptx_coef > 0.0 {
            stats.ptx_loss = self.ptx_loss(ptx_pick, &mut grads)?;
        }
        let norm = match self.cfg.max_grad_norm > 0.0 {
            true => grads.clip_global_norm(self.cfg.max_grad_norm)?,
            false => grads.global_norm()?,
        };
        if !norm.is_finite() {
            return Err(self.non_finite(step, "gradient norm", norm));
        }
        self.opt.step(&self.vars, &grads, lr)?;
        let log_ratio =
            (Tensor::from_vec(new_logp, mb.logp_old.len(), &self.device)? - vec(&mb.logp_old)?)?;
        stats.approx_kl = scalar(&(log_ratio.sqr()?.mean_all()? * 0.5)?)?;
        Ok(stats)
    }

    /// PPO-ptx: the mean next-token loss on `minibatch` SFT examples drawn for this update,
    /// its gradient times `ptx_coef` added to `grads` (in parts of at most
    /// `max_batch_tokens`, as SFT). Returns the loss.
    fn ptx_loss(&self, pick: (usize, usize, usize), grads: &mut Gradients) -> Result<f64> {
        let (step, epoch, mb) = pick;
        let mut rng = self.rng(step, 1000 + (epoch * 1000 + mb) as u64);
        let chosen: Vec<&TokenizedExample> = self
            .ptx
            .choose_multiple(&mut rng, self.cfg.minibatch.min(self.ptx.len()))
            .collect();
        let units: Vec<(usize, usize)> = chosen.iter().map(|e| (1, e.tokens.len())).collect();
        let targets: usize = chosen.iter().map(|e| e.num_targets()).sum();
        let mut loss = 0.0;
        for part in split_by_tokens(&units, self.cfg.max_batch_tokens) {
            let batch = Batch::new(&chosen[part], &self.device)?;
            let part_loss = (batch.nll_sum(&self.policy)? / targets.max(1) as f64)?;
            loss += scalar(&part_loss)?;
            let weighted = (part_loss * self.cfg.ptx_coef)?;
            grads.accumulate(&self.vars, self.policy.backward(&weighted)?)?;
        }
        Ok(loss)
    }

    fn non_finite(&self, step: usize, what: &'static str, value: f64) -> anyhow::Error {
        anyhow::Error::new(NonFiniteError {
            step,
            what,
            value,
            last_checkpoint: None,
        })
    }

    /// Writes a resumable checkpoint folder: policy (base weights, LoRA adapters), value
    /// head (GAE only), optimizer moments and [`PpoState`].
    pub fn save_checkpoint(&self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_dir_atomically(dir, |tmp| {
            self.params.write_checkpoint_files(tmp, extra_files)?;
            self.opt.save(&tmp.join(OPTIMIZER_FILE))?;
            self.write_head_and_state(tmp)
        })
    }

    fn write_head_and_state(&self, dir: &Path) -> Result<()> {
        if let Some(head) = &self.value_head {
            head.save_file(&dir.join(VALUE_HEAD_FILE))?;
        }
        resume::write_state(dir, &self.state)
    }

    /// Writes the policy as a plain model folder (LoRA merged) that every stage loads.
    pub fn save_final(&self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_dir_atomically(dir, |tmp| {
            self.params.write_final_files(tmp, extra_files)?;
            self.write_head_and_state(tmp)
        })
    }

    /// Current values of every policy tensor, LoRA adapters included (for comparisons).
    pub fn policy_weights(&self) -> Weights {
        let mut w = self.params.base_weights();
        w.extend(self.params.adapter_weights());
        w
    }
}

/// Per-token rollout-time outputs, one vector per rollout.
#[derive(Default)]
struct OldOutputs {
    logp: Vec<Vec<f64>>,
    logp_ref: Vec<Vec<f64>>,
    values: Vec<Vec<f64>>,
    entropy: Vec<Vec<f64>>,
}

struct Minibatch<'a> {
    rollouts: Vec<&'a Rollout>,
    logp_old: Vec<f64>,
    logp_ref: Vec<f64>,
    values_old: Vec<f64>,
    advantages: Vec<f64>,
    returns: Vec<f64>,
}

#[derive(Default)]
struct UpdateStats {
    policy_loss: f64,
    value_loss: f64,
    clip_frac: f64,
    value_clip_frac: f64,
    approx_kl: f64,
    ptx_loss: f64,
}

#[derive(Default)]
struct UpdateTotals {
    n: usize,
    policy_loss: f64,
    value_loss: f64,
    clip_frac: f64,
    value_clip_frac: f64,
    approx_kl: f64,
    ptx_loss: f64,
}

impl UpdateTotals {
    fn add(&mut self, u: UpdateStats) {
        self.n += 1;
        self.policy_loss += u.policy_loss;
        self.value_loss += u.value_loss;
        self.clip_frac += u.clip_frac;
        self.value_clip_frac += u.value_clip_frac;
        self.approx_kl += u.approx_kl;
        self.ptx_loss += u.ptx_loss;
    }

    fn mean(&self, total: f64) -> f64 {
        total / self.n.max(1) as f64
    }
}

/// The rows `pick`, in order.
fn gather_rows(rows: &[Vec<f64>], pick: &[usize]) -> Vec<Vec<f64>> {
    pick.iter().map(|&i| rows[i].clone()).collect()
}

/// Refuses to resume the run saved in `checkpoint`, whose rewards came from `saved`, with
/// rewards from `now`, naming each difference (a checkpoint without a record, written before
/// one was kept, is not checked).
fn check_reward_sources(
    checkpoint: &Path,
    saved: &serde_json::Value,
    now: &serde_json::Value,
) -> Result<()> {
    if saved.is_null() {
        return Ok(());
    }
    let changed = resume::changed_settings(saved, now);
    ensure!(
        changed.is_empty(),
        "--resume: the reward differs from that of the run in {}: {}; resume with the run's \
         reward model, reference, reward weights and feedback model, or start a new run in \
         another --out",
        checkpoint.display(),
        changed.join(", ")
    );
    Ok(())
}

/// The rows `pick` concatenated; nothing when there are no rows (no value head, no returns).
fn gather(rows: &[Vec<f64>], pick: &[usize]) -> Vec<f64> {
    if rows.is_empty() {
        return Vec::new();
    }
    pick.iter().flat_map(|&i| rows[i].iter().copied()).collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn prompts_fingerprint(prompts: &[Vec<u32>]) -> String {
    let mut bytes = Vec::new();
    for p in prompts {
        bytes.extend((p.len() as u32).to_le_bytes());
        for t in p {
            bytes.extend(t.to_le_bytes());
        }
    }
    format!("{:016x}", crate::hash::fnv1a(&[&bytes]))
}
