//! Reward-model training on tiny random-weight models: a synthetic preference is learnt,
//! and a resumed run equals the uninterrupted one.

use super::optim::ScheduleKind;
use super::params::Trainable;
use super::reward::{evaluate_pairs, RewardModel, RewardModelInfo, MARKER_FILE};
use super::reward_data::TokenPair;
use super::reward_trainer::{RewardTrainConfig, RewardTrainer};
use super::sft::SftConfig;
use super::tests::{tiny_config, tiny_weights, VOCAB};
use super::TrainEvent;
use crate::model_files::checkpoint::{checkpoint_dir, load_model_dir, max_weight_difference};
use crate::model_files::lora::LoraConfig;
use anyhow::Result;
use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The token that makes a response better.
const GOOD: u32 = 5;

/// `n` prompts with 2 responses each: a 2-token prompt, 4-token responses of random
/// tokens (never `GOOD`), one of which gets `GOOD` at a random position. The better
/// response sits in slot A or B at random (label 1 or 0).
fn preference_pairs(n: usize, seed: u64) -> Vec<TokenPair> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let token = |rng: &mut ChaCha8Rng| loop {
        let t = rng.random_range(6..VOCAB as u32);
        if t != GOOD {
            return t;
        }
    };
    (0..n)
        .map(|i| {
            let prompt = vec![1, token(&mut rng)];
            let mut good = prompt.clone();
            let mut bad = prompt.clone();
            for _ in 0..4 {
                good.push(token(&mut rng));
                bad.push(token(&mut rng));
            }
            let at = rng.random_range(2..6);
            good[at] = GOOD;
            let a_wins = rng.random_bool(0.5);
            let (a, b) = if a_wins { (good, bad) } else { (bad, good) };
            TokenPair {
                a,
                b,
                p_a: if a_wins { 1.0 } else { 0.0 },
                weight: 1.0,
                group: format!("{seed}-{i}"),
            }
        })
        .collect()
}

fn config(trainable: Trainable, steps: usize, lr: f64) -> RewardTrainConfig {
    RewardTrainConfig {
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
        ..RewardTrainConfig::default()
    }
}

#[test]
fn tiny_reward_model_learns_a_synthetic_preference() -> Result<()> {
    let cfg = tiny_config(true);
    let train = preference_pairs(96, 1);
    let eval = preference_pairs(64, 2);
    let mut trainer = RewardTrainer::new(
        &cfg,
        tiny_weights(&cfg, DType::F32),
        train,
        eval.clone(),
        config(Trainable::All, 60, 3e-3),
    )?;
    let before = trainer.evaluate()?.unwrap().accuracy;
    while !trainer.is_done() {
        trainer.train_step()?;
    }
    let (model, head) = trainer.model();
    let after = evaluate_pairs(model, head, &eval, 16, 10)?;
    assert!(
        after.accuracy > 0.95,
        "held-out accuracy {before:.3} -> {:.3}",
        after.accuracy
    );
    assert!(after.chosen.mean > after.rejected.mean);
    Ok(())
}

#[test]
fn resumed_lora_run_equals_the_uninterrupted_one() -> Result<()> {
    let cfg = tiny_config(false);
    let train = preference_pairs(24, 4);
    let eval = preference_pairs(8, 5);
    let lora = Trainable::Lora(LoraConfig {
        rank: 2,
        alpha: 4.0,
        ..LoraConfig::default()
    });
    let mut run_cfg = config(lora, 4, 1e-2);
    run_cfg.train.save_every = 2;
    run_cfg.train.batch_size = 4;
    run_cfg.center_coef = 0.01;
    let marker = RewardModelInfo::new(cfg.hidden_size, "tiny").to_bytes();
    let extra = [(MARKER_FILE, marker)];
    let dir = tempfile::tempdir()?;
    let (full, resumed) = (dir.path().join("full"), dir.path().join("resumed"));
    let weights = tiny_weights(&cfg, DType::F32);
    let mut trainer = RewardTrainer::new(
        &cfg,
        weights.clone(),
        train.clone(),
        eval.clone(),
        run_cfg.clone(),
    )?;
    let mut events = 0;
    trainer.run(&full, &extra, &mut |_: &TrainEvent| events += 1)?;
    assert!(events >= 4 + 2);

    // Stop after 2 steps (the checkpoint of the first run is the same by construction,
    // so train a second run to step 2 and resume that).
    let mut short = run_cfg.clone();
    short.train.max_steps = Some(4);
    let mut first = RewardTrainer::new(&cfg, weights, train.clone(), eval.clone(), short)?;
    first.train_step()?;
    first.train_step()?;
    let ckpt = checkpoint_dir(&resumed, 2);
    first.save_checkpoint(&ckpt, &extra)?;
    drop(first);
    let mut second = RewardTrainer::resume(&ckpt, train, eval, &Device::Cpu, run_cfg.clone())?;
    assert_eq!(second.state().step, 2);
    second.run(&resumed, &extra, &mut |_: &TrainEvent| {})?;

    let (_, a) = load_model_dir(&full.join("final"), DType::F32, &Device::Cpu)?;
    let (_, b) = load_model_dir(&resumed.join("final"), DType::F32, &Device::Cpu)?;
    assert_eq!(max_weight_difference(&a, &b)?, 0.0);
    let ra = RewardModel::load(&full.join("final"), &Device::Cpu)?;
    let rb = RewardModel::load(&resumed.join("final"), &Device::Cpu)?;
    let seqs = vec![vec![1, 7, 9, GOOD], vec![1, 8]];
    assert_eq!(ra.score(&seqs, 2)?, rb.score(&seqs, 2)?);
    // The checkpoint itself loads as a reward model too (adapters merged on load).
    RewardModel::load(&ckpt, &Device::Cpu)?;
    Ok(())
}

#[test]
fn rm_batch_accuracy_counts_a_reward_tie_as_half() -> Result<()> {
    // One pair whose two sequences are the same tokens: the rewards tie exactly. With b
    // chosen (p = 0) the tie is ½, not "correct" (the old `(r_a > r_b) == (p > ½)` gave 1).
    let cfg = tiny_config(true);
    let seq = vec![1, 7, 9, 11];
    let pair = TokenPair {
        a: seq.clone(),
        b: seq,
        p_a: 0.0,
        weight: 1.0,
        group: "tie".into(),
    };
    let mut run = config(Trainable::All, 1, 1e-3);
    run.train.batch_size = 1;
    let mut trainer = RewardTrainer::new(
        &cfg,
        tiny_weights(&cfg, DType::F32),
        vec![pair],
        Vec::new(),
        run,
    )?;
    let (_, accuracy) = trainer.train_step()?;
    assert_eq!(accuracy, 0.5);
    Ok(())
}

/// Pairs of conversations holding 3, 3, 2, 2, 1 and 1 pairs (12 in all), and the first seed
/// in 0..64 whose batches of 4 pairs number differently in epochs 0, 1 and 2.
pub(super) fn uneven_epochs() -> (Vec<String>, u64) {
    let keys: Vec<String> = [3, 3, 2, 2, 1, 1]
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(format!("c{c}"), n))
        .collect();
    let counts = |seed: u64| -> Vec<usize> {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        (0..3)
            .map(|e| super::reward_data::group_batches_by(&refs, 4, seed, e).len())
            .collect()
    };
    let seed = (0..64)
        .find(|&s| {
            let c = counts(s);
            c.iter().sum::<usize>() != 3 * c[0]
        })
        .expect("some seed packs the epochs differently");
    (keys, seed)
}

#[test]
fn rm_total_steps_cover_every_epochs_own_batches() -> Result<()> {
    // Three epochs, one micro-batch a step: the run ends exactly where the third epoch
    // does (epoch 3, cursor 0), not where three copies of epoch 0's batch count would.
    let (keys, seed) = uneven_epochs();
    let cfg = tiny_config(true);
    let mut train = preference_pairs(keys.len(), 6);
    for (p, k) in train.iter_mut().zip(&keys) {
        p.group = k.clone();
    }
    let mut run = config(Trainable::All, 1, 1e-3);
    run.train.max_steps = None;
    run.train.epochs = 3;
    run.train.batch_size = 4;
    run.train.seed = seed;
    let mut trainer =
        RewardTrainer::new(&cfg, tiny_weights(&cfg, DType::F32), train, Vec::new(), run)?;
    while !trainer.is_done() {
        trainer.train_step()?;
    }
    let s = trainer.state();
    assert_eq!((s.epoch, s.cursor), (3, 0), "{} steps", s.total_steps);
    Ok(())
}
