//! Memory-saving computations give the numbers of the plain ones: log-probabilities in slices
//! of positions, activation checkpointing in PPO.

use super::data::{Batch, TokenizedExample};
use super::model::CausalLm;
use super::optim::ScheduleKind;
use super::params::{ParamStore, Trainable};
use super::ppo::{PpoData, PpoTrainer, Scorer};
use super::ppo_config::PpoConfig;
use super::ppo_rollout::Rollout;
use super::reward_data::TokenPair;
use super::reward_trainer::{RewardTrainConfig, RewardTrainer};
use super::sft::SftConfig;
use super::tests::{dataset, lora_all, max_diff, tiny_config, tiny_weights, VOCAB};
use super::trainer::SftTrainer;
use crate::model_files::lora;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The loss of [`Batch::nll_sum`] (log-probabilities in slices of 3 positions, recomputed in
/// backward) and every gradient equal those of full `[b, t, vocab]` logits, in f64, for tied
/// and untied output projections, full fine-tuning and LoRA.
#[test]
fn sliced_log_probs_give_the_plain_loss_and_gradients() -> Result<()> {
    let data: Vec<TokenizedExample> = dataset(4, 21);
    let refs: Vec<&TokenizedExample> = data.iter().collect();
    let batch = Batch::new(&refs, &Device::Cpu)?;
    assert!(batch.num_targets > 6, "needs several slices");
    for tied in [true, false] {
        let cfg = tiny_config(tied);
        for mode in [Trainable::All, lora_all()] {
            let mut weights = tiny_weights(&cfg, DType::F64);
            if let Some(l) = mode.lora() {
                weights.extend(lora::init_adapters(&cfg, l, 1, DType::F64, &Device::Cpu)?);
            }
            let store = ParamStore::new(&cfg, weights, mode.clone())?;
            let plain = store.build_model()?;
            let sliced = store.build_model()?.with_loss_slice_rows(3);
            let full = plain.forward(&batch.input_ids, Some(&batch.attention_mask))?;
            let la = batch.nll_sum_from_logits(&full)?;
            let lb = batch.nll_sum(&sliced)?;
            let (a, b) = (la.to_scalar::<f64>()?, lb.to_scalar::<f64>()?);
            assert!(
                (a - b).abs() < 1e-12 * a.abs(),
                "tied {tied} {mode:?}: {a} vs {b}"
            );
            let (ga, gb) = (la.backward()?, sliced.backward(&lb)?);
            for (name, var) in store.vars() {
                let (Some(x), Some(y)) = (ga.get(var.as_tensor()), gb.get(var.as_tensor())) else {
                    panic!("tied {tied} {mode:?} {name}: gradient only on one side");
                };
                let d = max_diff(x, y);
                assert!(
                    d < 1e-12,
                    "tied {tied} {mode:?} {name}: gradients differ by {d}"
                );
            }
        }
    }
    Ok(())
}

/// Temperature-scaled log-probabilities and entropies in slices equal the plain formulas.
#[test]
fn sliced_log_probs_and_entropies_at_a_temperature() -> Result<()> {
    let cfg = tiny_config(false);
    let model = super::model_from_weights(&cfg, &tiny_weights(&cfg, DType::F64))?;
    let rows = Tensor::randn(0f64, 1.0, (7, cfg.hidden_size), &Device::Cpu)?;
    let targets = Tensor::new(&[1u32, 5, 9, 63, 0, 2, 17], &Device::Cpu)?;
    let log_probs = candle_nn::ops::log_softmax(&(model.logits_from_hidden(&rows)? / 0.7)?, 1)?;
    let want = log_probs.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let want_entropy = (log_probs.exp()? * &log_probs)?.sum(1)?.neg()?;
    let sliced = model.with_loss_slice_rows(2);
    assert!(max_diff(&sliced.target_logprobs(&rows, &targets, 0.7)?, &want) < 1e-12);
    assert!(max_diff(&sliced.entropies(&rows, 0.7)?, &want_entropy) < 1e-12);
    assert_eq!(VOCAB, cfg.vocab_size);
    Ok(())
}

/// Reward = fraction of response tokens equal to 5.
struct FractionOfFives;

impl Scorer for FractionOfFives {
    fn score(&mut self, rollouts: &[Rollout]) -> Result<Vec<Option<f64>>> {
        Ok(rollouts
            .iter()
            .map(|r| {
                let hits = r.response_ids.iter().filter(|&&t| t == 5).count();
                Some(hits as f64 / r.response_ids.len() as f64)
            })
            .collect())
    }
}

/// Two PPO steps with the policy's blocks checkpointed end with the weights of the same
/// steps on a policy that keeps its activations (GAE with a value head, PPO-ptx; f32, so
/// within float rounding).
#[test]
fn checkpointed_ppo_equals_plain_ppo() -> Result<()> {
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let data = || {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        PpoData {
            prompts: (0..6)
                .map(|_| (0..4).map(|_| rng.random_range(6..VOCAB as u32)).collect())
                .collect(),
            stop_ids: vec![2],
            ptx: dataset(4, 5),
            reward_sources: serde_json::Value::Null,
        }
    };
    let run_cfg = PpoConfig {
        steps: 2,
        rollouts: 4,
        minibatch: 2,
        lr: 1e-2,
        max_new_tokens: 6,
        ptx_coef: 0.5,
        trainable: Trainable::All,
        seed: 5,
        ..PpoConfig::default()
    };
    let mut ckpt = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg.clone())?;
    let mut plain = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg)?
        .without_checkpointing()?;
    for _ in 0..2 {
        let a = ckpt.step(&mut FractionOfFives)?.stats;
        let b = plain.step(&mut FractionOfFives)?.stats;
        assert!(
            (a.policy_loss - b.policy_loss).abs() < 1e-5,
            "{a:?} vs {b:?}"
        );
    }
    let (wa, wb) = (ckpt.policy_weights(), plain.policy_weights());
    let mut moved = 0;
    for (name, a) in &wa {
        let d = max_diff(a, &wb[name]);
        assert!(d < 1e-5, "{name}: weights differ by {d}");
        moved += usize::from(max_diff(a, &weights[name]) > 1e-6);
    }
    assert!(moved > 4, "only {moved} tensors changed");
    Ok(())
}

fn accumulation_config(max_batch_tokens: Option<usize>) -> SftConfig {
    SftConfig {
        lr: 1e-2,
        warmup_steps: 0,
        schedule: ScheduleKind::Constant,
        max_steps: Some(2),
        batch_size: 6,
        grad_accum: 2,
        eval_every: 0,
        save_every: 0,
        max_batch_tokens,
        ..SftConfig::default()
    }
}

/// SFT steps whose micro-batches run in parts of at most 16 padded tokens (1–2 examples of
/// 7–9 tokens) end with the weights of whole micro-batches.
#[test]
fn token_budget_micro_batches_give_the_whole_batch_update() -> Result<()> {
    let cfg = tiny_config(true);
    let weights = tiny_weights(&cfg, DType::F32);
    let data = dataset(24, 8);
    let run = |budget| -> Result<SftTrainer> {
        let mut t = SftTrainer::new(
            &cfg,
            weights.clone(),
            &data,
            &[],
            accumulation_config(budget),
        )?;
        while !t.is_done() {
            t.train_step()?;
        }
        Ok(t)
    };
    let (whole, parts) = (run(None)?, run(Some(16))?);
    assert_eq!(whole.state().step, 2);
    let (a, b) = (
        whole.state().last_loss.unwrap(),
        parts.state().last_loss.unwrap(),
    );
    assert!((a - b).abs() < 1e-5 * a.abs(), "loss {a} vs {b}");
    // Two Adam steps of lr 1e-2 move weights by up to 2e-2; summation order (FMA or not)
    // leaves ~2e-5 between the two ways of adding the same gradients.
    for (name, wa) in whole.params().tensors() {
        let d = max_diff(wa, &parts.params().tensors()[name]);
        assert!(d < 1e-4, "{name}: weights differ by {d}");
        assert!(max_diff(wa, &weights[name]) > 1e-6, "{name} did not move");
    }
    Ok(())
}

/// Reward-model steps with a token budget of one conversation (2 pairs, 4 rows of 6 tokens)
/// per part give the loss curve and weights of whole micro-batches of 8 pairs.
#[test]
fn token_budget_keeps_conversations_together_and_the_update() -> Result<()> {
    let cfg = tiny_config(true);
    let weights = tiny_weights(&cfg, DType::F32);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let pairs: Vec<TokenPair> = (0..32)
        .map(|i| {
            let mut seq = || (0..6).map(|_| rng.random_range(3..VOCAB as u32)).collect();
            TokenPair {
                a: seq(),
                b: seq(),
                p_a: f64::from(i % 3 == 0),
                weight: 1.0,
                group: format!("conversation {}", i / 2),
            }
        })
        .collect();
    let run = |budget| -> Result<RewardTrainer> {
        let mut train = accumulation_config(budget);
        (train.batch_size, train.grad_accum) = (8, 1);
        let rm_cfg = RewardTrainConfig {
            train,
            ..RewardTrainConfig::default()
        };
        let mut t = RewardTrainer::new(&cfg, weights.clone(), pairs.clone(), vec![], rm_cfg)?;
        while !t.is_done() {
            t.train_step()?;
        }
        Ok(t)
    };
    let (whole, parts) = (run(None)?, run(Some(24))?);
    for (a, b) in whole.state().history.iter().zip(&parts.state().history) {
        assert!(
            (a.loss - b.loss).abs() < 1e-5,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        assert_eq!(a.accuracy, b.accuracy);
    }
    // Two Adam steps of lr 1e-2 move weights by up to 2e-2; summation order (FMA or not)
    // leaves ~2e-5 between the two ways of adding the same gradients.
    for (name, wa) in whole.params().tensors() {
        let d = max_diff(wa, &parts.params().tensors()[name]);
        assert!(d < 1e-4, "{name}: weights differ by {d}");
    }
    Ok(())
}
