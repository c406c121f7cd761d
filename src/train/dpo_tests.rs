//! DPO on tiny random-weight models: the policy learns a synthetic preference (held-out
//! implicit-reward accuracy rises from ½), the reference log-probabilities equal the starting
//! policy's, and a resumed run equals the uninterrupted one.

use super::data::TokenizedExample;
use super::dpo_data::{pair_logps, DpoPair};
use super::dpo_loss::DpoLoss;
use super::dpo_trainer::{DpoData, DpoTrainConfig, DpoTrainer};
use super::optim::ScheduleKind;
use super::params::Trainable;
use super::sft::SftConfig;
use super::tests::{tiny_config, tiny_weights, VOCAB};
use super::{model_from_weights, LlamaConfig, TrainEvent, Weights};
use crate::model_files::checkpoint::{checkpoint_dir, load_model_dir, max_weight_difference};
use crate::model_files::lora::LoraConfig;
use anyhow::Result;
use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The token that makes a response better.
const GOOD: u32 = 5;

fn example(prompt: &[u32], response: &[u32]) -> TokenizedExample {
    let mut tokens = prompt.to_vec();
    tokens.extend(response);
    let loss_mask = (0..tokens.len()).map(|i| i >= prompt.len()).collect();
    TokenizedExample { tokens, loss_mask }
}

/// `n` prompts with 2 responses each: a 2-token prompt, 4-token responses of random tokens
/// (never `GOOD`), one of which gets `GOOD` at a random position. The better response sits
/// in slot A or B at random; its label is `strength` (or `1 − strength` in slot B).
fn preference_pairs(n: usize, seed: u64, strength: f64) -> Vec<DpoPair> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let token = |rng: &mut ChaCha8Rng| loop {
        let t = rng.random_range(6..VOCAB as u32);
        if t != GOOD {
            return t;
        }
    };
    (0..n)
        .map(|i| {
            let prompt = [1, token(&mut rng)];
            let mut good: Vec<u32> = (0..4).map(|_| token(&mut rng)).collect();
            let bad: Vec<u32> = (0..4).map(|_| token(&mut rng)).collect();
            good[rng.random_range(0..4)] = GOOD;
            let a_wins = rng.random_bool(0.5);
            let (a, b) = if a_wins { (good, bad) } else { (bad, good) };
            DpoPair {
                a: example(&prompt, &a),
                b: example(&prompt, &b),
                p_a: if a_wins { strength } else { 1.0 - strength },
                weight: 1.0,
                group: format!("{seed}-{i}"),
            }
        })
        .collect()
}

/// The pairs with the reference log-probabilities of `weights`.
fn with_reference(
    cfg: &LlamaConfig,
    weights: &Weights,
    train: Vec<DpoPair>,
    eval: Vec<DpoPair>,
) -> Result<DpoData> {
    let model = model_from_weights(cfg, weights)?;
    Ok(DpoData {
        train_reference: pair_logps(&model, &train, 8, &Device::Cpu, |_| {})?,
        eval_reference: pair_logps(&model, &eval, 8, &Device::Cpu, |_| {})?,
        train,
        eval,
    })
}

fn config(trainable: Trainable, loss: DpoLoss, steps: usize, lr: f64) -> DpoTrainConfig {
    DpoTrainConfig {
        train: SftConfig {
            lr,
            warmup_steps: 0,
            schedule: ScheduleKind::Constant,
            max_steps: Some(steps),
            batch_size: 8,
            grad_accum: 1,
            eval_every: 0,
            save_every: 0,
            trainable,
            seed: 3,
            ..SftConfig::default()
        },
        loss,
        beta: 0.5,
        label_smoothing: 0.0,
    }
}

#[test]
fn tiny_policy_learns_a_synthetic_preference_with_every_loss() -> Result<()> {
    let cfg = tiny_config(true);
    let weights = tiny_weights(&cfg, DType::F32);
    // Soft AI-like labels (0.8 / 0.2) for training, hard labels held out.
    let data = with_reference(
        &cfg,
        &weights,
        preference_pairs(64, 1, 0.8),
        preference_pairs(48, 2, 1.0),
    )?;
    for loss in DpoLoss::ALL {
        let mut trainer = DpoTrainer::new(
            &cfg,
            weights.clone(),
            data.clone(),
            config(Trainable::All, loss, 30, 3e-3),
        )?;
        // Before training the policy is the reference: every implicit reward is exactly 0.
        let before = trainer.evaluate()?.unwrap();
        assert_eq!((before.accuracy, before.margin), (0.5, 0.0), "{loss}");
        assert_eq!((before.chosen_drift, before.rejected_drift), (0.0, 0.0));
        let first = trainer.train_step()?.loss;
        while !trainer.is_done() {
            trainer.train_step()?;
        }
        let after = trainer.evaluate()?.unwrap();
        let last = trainer.state().history.last().unwrap().loss;
        assert!(
            after.accuracy > 0.9 && after.margin > 0.0,
            "{loss}: held-out implicit-reward accuracy {} -> {}, margin {}",
            before.accuracy,
            after.accuracy,
            after.margin
        );
        assert!(after.logp_accuracy > before.logp_accuracy, "{loss}");
        assert!(last < first, "{loss}: training loss {first} -> {last}");
        if loss == DpoLoss::Sigmoid {
            // DPO at h = 0 is ln 2 per pair.
            assert!((first - std::f64::consts::LN_2).abs() < 1e-6, "{first}");
        }
    }
    Ok(())
}

#[test]
fn resumed_lora_run_equals_the_uninterrupted_one() -> Result<()> {
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let data = with_reference(
        &cfg,
        &weights,
        preference_pairs(24, 4, 0.7),
        preference_pairs(8, 5, 1.0),
    )?;
    let lora = Trainable::Lora(LoraConfig {
        rank: 2,
        alpha: 4.0,
        ..LoraConfig::default()
    });
    let mut run_cfg = config(lora, DpoLoss::Cdpo, 4, 1e-2);
    run_cfg.train.save_every = 2;
    run_cfg.train.batch_size = 4;
    run_cfg.train.grad_accum = 2;
    let dir = tempfile::tempdir()?;
    let (full, resumed) = (dir.path().join("full"), dir.path().join("resumed"));
    let mut trainer = DpoTrainer::new(&cfg, weights.clone(), data.clone(), run_cfg.clone())?;
    let mut events = 0;
    trainer.run(&full, &[], &mut |_: &TrainEvent| events += 1)?;
    // 4 steps, 2 checkpoints + final, evaluations at 0 and 4.
    assert_eq!(events, 4 + 3 + 2);
    let full_state = trainer.state().clone();

    let mut first = DpoTrainer::new(&cfg, weights, data.clone(), run_cfg.clone())?;
    first.train_step()?;
    first.train_step()?;
    let ckpt = checkpoint_dir(&resumed, 2);
    first.save_checkpoint(&ckpt, &[])?;
    drop(first);
    let mut second = DpoTrainer::resume(&ckpt, data.clone(), &Device::Cpu, run_cfg.clone())?;
    assert_eq!(second.state().step, 2);
    second.run(&resumed, &[], &mut |_: &TrainEvent| {})?;

    let (_, a) = load_model_dir(&full.join("final"), DType::F32, &Device::Cpu)?;
    let (_, b) = load_model_dir(&resumed.join("final"), DType::F32, &Device::Cpu)?;
    assert_eq!(max_weight_difference(&a, &b)?, 0.0);
    let losses = |s: &super::dpo_trainer::DpoTrainerState| -> Vec<f64> {
        s.history.iter().map(|p| p.loss).collect()
    };
    assert_eq!(losses(&full_state), losses(second.state()));
    assert_eq!(full_state.evals.last(), second.state().evals.last());

    // Other data, or other reference log-probabilities, are refused on resume.
    let mut other = data;
    other.train_reference[0][0] += 1.0;
    let err = DpoTrainer::resume(&ckpt, other, &Device::Cpu, run_cfg.clone())
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("differ"), "{err:#}");
    Ok(())
}

/// DPO steps whose micro-batches of 8 pairs run in parts of at most 24 padded tokens (2
/// pairs: 4 rows of 6 tokens) give the loss curve and weights of whole micro-batches.
#[test]
fn token_budget_parts_give_the_whole_batch_update() -> Result<()> {
    let cfg = tiny_config(true);
    let weights = tiny_weights(&cfg, DType::F32);
    let data = with_reference(&cfg, &weights, preference_pairs(32, 7, 0.8), Vec::new())?;
    let run = |budget| -> Result<DpoTrainer> {
        let mut run_cfg = config(Trainable::All, DpoLoss::Sigmoid, 2, 1e-2);
        run_cfg.train.max_batch_tokens = budget;
        run_cfg.train.grad_accum = 2;
        let mut t = DpoTrainer::new(&cfg, weights.clone(), data.clone(), run_cfg)?;
        while !t.is_done() {
            t.train_step()?;
        }
        Ok(t)
    };
    let (whole, parts) = (run(None)?, run(Some(24))?);
    assert_eq!(whole.state().history.len(), 2);
    for (a, b) in whole.state().history.iter().zip(&parts.state().history) {
        assert!(
            (a.loss - b.loss).abs() < 1e-6,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        assert_eq!((a.accuracy, a.tokens), (b.accuracy, b.tokens));
    }
    // Two Adam steps of lr 1e-2 move weights by up to 2e-2; summation order leaves ~1e-5
    // between the two ways of adding the same gradients.
    let (a, b) = (whole.params().base_weights(), parts.params().base_weights());
    assert!(max_weight_difference(&a, &b)? < 1e-4);
    assert!(max_weight_difference(&a, &weights)? > 1e-3);
    Ok(())
}

#[test]
fn ties_are_refused_by_rounding_losses() -> Result<()> {
    let cfg = tiny_config(true);
    let weights = tiny_weights(&cfg, DType::F32);
    let mut data = with_reference(&cfg, &weights, preference_pairs(4, 6, 1.0), Vec::new())?;
    data.train[1].p_a = 0.5;
    let err = DpoTrainer::new(
        &cfg,
        weights.clone(),
        data.clone(),
        config(Trainable::All, DpoLoss::Hinge, 1, 1e-3),
    )
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("tie"), "{err:#}");
    DpoTrainer::new(
        &cfg,
        weights,
        data,
        config(Trainable::All, DpoLoss::Cdpo, 1, 1e-3),
    )?;
    Ok(())
}

#[test]
fn dpo_total_steps_cover_every_epochs_own_batches() -> Result<()> {
    // As for the reward model: three epochs of conversations whose packing into batches of
    // 4 varies by epoch end exactly at epoch 3, cursor 0.
    let (keys, seed) = super::reward_tests::uneven_epochs();
    let cfg = tiny_config(true);
    let weights = tiny_weights(&cfg, DType::F32);
    let mut train = preference_pairs(keys.len(), 6, 1.0);
    for (p, k) in train.iter_mut().zip(&keys) {
        p.group = k.clone();
    }
    let data = with_reference(&cfg, &weights, train, Vec::new())?;
    let mut run = config(Trainable::All, DpoLoss::Sigmoid, 1, 1e-3);
    run.train.max_steps = None;
    run.train.epochs = 3;
    run.train.batch_size = 4;
    run.train.seed = seed;
    let mut trainer = DpoTrainer::new(&cfg, weights, data, run)?;
    while !trainer.is_done() {
        trainer.train_step()?;
    }
    let s = trainer.state();
    assert_eq!((s.epoch, s.cursor), (3, 0), "{} steps", s.total_steps);
    Ok(())
}
