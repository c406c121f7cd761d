//! Tests of the SFT training loop on tiny random-weight models.

use super::params::Trainable;
use super::sft::{NonFiniteError, SftConfig};
use super::tests::{dataset, lora_all, max_diff, quick_config, tiny_config, tiny_weights};
use super::trainer::SftTrainer;
use super::trainer::{train_sft, SftStart};
use super::{ScheduleKind, TrainEvent};
use crate::model_files::checkpoint::{self, max_weight_difference};
use crate::model_files::weights::Weights;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

#[test]
fn loss_falls_on_a_memorizable_set() -> Result<()> {
    let cfg = tiny_config(true);
    let data = dataset(8, 1);
    let sft = SftConfig {
        max_steps: Some(40),
        ..quick_config(Trainable::All)
    };
    let mut trainer = SftTrainer::new(&cfg, tiny_weights(&cfg, DType::F32), &data, &data, sft)?;
    let first = trainer.train_step()?.loss;
    let mut last = first;
    while !trainer.is_done() {
        last = trainer.train_step()?.loss;
    }
    assert!(last < 0.3 * first, "loss went from {first} to {last}");
    let eval = trainer.evaluate()?.unwrap();
    assert!(eval < 0.3 * first, "eval loss {eval}");
    Ok(())
}

#[test]
fn trainable_parameters_change_and_frozen_ones_do_not() -> Result<()> {
    let modes = [
        (true, Trainable::All),
        (false, Trainable::TopLayers(1)),
        (true, Trainable::TopLayers(1)),
        (true, lora_all()),
    ];
    for (tied, mode) in modes {
        let cfg = tiny_config(tied);
        let base = tiny_weights(&cfg, DType::F32);
        let mut trainer = SftTrainer::new(
            &cfg,
            base.clone(),
            &dataset(8, 2),
            &[],
            quick_config(mode.clone()),
        )?;
        let before: Weights = trainer
            .params()
            .tensors()
            .iter()
            .map(|(name, t)| (name.clone(), t.copy().unwrap()))
            .collect();
        while !trainer.is_done() {
            trainer.train_step()?;
        }
        let params = trainer.params();
        let trainable: Vec<&String> = params.vars().iter().map(|(n, _)| n).collect();
        for (name, after) in params.tensors() {
            let changed = max_diff(&before[name], after) > 0.0;
            let expected = mode.is_trainable(&cfg, name);
            assert_eq!(
                changed, expected,
                "{mode:?} tied={tied}: {name} changed={changed}"
            );
            assert_eq!(trainable.contains(&name), expected, "{name}");
        }
        match &mode {
            Trainable::TopLayers(_) => {
                assert!(!trainable.iter().any(|n| n.starts_with("model.layers.0.")));
                assert_eq!(trainable.contains(&&"lm_head.weight".to_string()), !tied);
                assert!(!trainable.contains(&&"model.embed_tokens.weight".to_string()));
            }
            Trainable::Lora(_) => assert_eq!(trainable.len(), 2 * 7 * cfg.num_hidden_layers),
            Trainable::All => assert_eq!(trainable.len(), params.tensors().len()),
        }
    }
    Ok(())
}

#[test]
fn gradient_accumulation_matches_one_large_batch() -> Result<()> {
    let cfg = tiny_config(true);
    let data = dataset(8, 6);
    let run = |batch_size, grad_accum| -> Result<(f64, Weights)> {
        let sft = SftConfig {
            max_steps: Some(1),
            batch_size,
            grad_accum,
            ..quick_config(Trainable::All)
        };
        let mut t = SftTrainer::new(&cfg, tiny_weights(&cfg, DType::F32), &data, &[], sft)?;
        let loss = t.train_step()?.loss;
        Ok((loss, t.params().base_weights()))
    };
    let (loss_a, w_a) = run(4, 1)?;
    let (loss_b, w_b) = run(2, 2)?;
    assert!((loss_a - loss_b).abs() < 1e-5, "{loss_a} vs {loss_b}");
    assert!(max_weight_difference(&w_a, &w_b)? < 1e-5);
    Ok(())
}

#[test]
fn resume_repeats_the_uninterrupted_run() -> Result<()> {
    let cfg = tiny_config(true);
    let data = dataset(10, 8);
    let eval = dataset(3, 9);
    for mode in [Trainable::All, lora_all()] {
        let sft = SftConfig {
            lr: 5e-3,
            weight_decay: 0.1,
            warmup_steps: 2,
            schedule: ScheduleKind::Cosine,
            max_steps: Some(6),
            batch_size: 3,
            grad_accum: 2,
            ..quick_config(mode)
        };
        let mut full = SftTrainer::new(
            &cfg,
            tiny_weights(&cfg, DType::F32),
            &data,
            &eval,
            sft.clone(),
        )?;
        let expected: Vec<f64> = (0..6)
            .map(|_| full.train_step().map(|s| s.loss))
            .collect::<Result<_>>()?;

        let dir = tempfile::tempdir()?;
        let ckpt = dir.path().join("checkpoint-4");
        let mut first = SftTrainer::new(
            &cfg,
            tiny_weights(&cfg, DType::F32),
            &data,
            &eval,
            sft.clone(),
        )?;
        let mut losses: Vec<f64> = (0..4)
            .map(|_| first.train_step().map(|s| s.loss))
            .collect::<Result<_>>()?;
        first.save_checkpoint(&ckpt, &[])?;
        drop(first);
        let mut resumed = SftTrainer::resume(&ckpt, &data, &eval, &Device::Cpu, sft.clone())?;
        assert_eq!(resumed.state().step, 4);
        while !resumed.is_done() {
            losses.push(resumed.train_step()?.loss);
        }
        for (a, b) in expected.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-5, "{expected:?} vs {losses:?}");
        }
        assert_eq!(losses.len(), 6);
        let diff = max_weight_difference(
            &full.params().base_weights(),
            &resumed.params().base_weights(),
        )?;
        assert!(diff < 1e-5);
        assert!(SftTrainer::resume(&ckpt, &data[1..], &eval, &Device::Cpu, sft.clone()).is_err());
    }
    Ok(())
}

#[test]
fn run_writes_log_checkpoints_and_final_model_and_resumes() -> Result<()> {
    let cfg = tiny_config(true);
    let (data, eval) = (dataset(6, 10), dataset(2, 11));
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("run");
    let sft = SftConfig {
        max_steps: Some(4),
        eval_every: 2,
        save_every: 2,
        batch_size: 2,
        ..quick_config(Trainable::All)
    };
    let extra = [("tokenizer.json", b"{}".to_vec())];
    let mut events = Vec::new();
    let mut observer = |e: &TrainEvent| {
        events.push(
            format!("{e:?}")
                .split('(')
                .next()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string(),
        )
    };
    let start = SftStart::Fresh {
        model_config: cfg.clone(),
        weights: tiny_weights(&cfg, DType::F32),
        config: sft.clone(),
    };
    let summary = train_sft(start, &data, &eval, &out, &extra, &mut observer)?;
    assert_eq!(summary.steps, 4);
    assert!(summary.final_eval_loss.unwrap().is_finite());
    let log = std::fs::read_to_string(out.join("train_log.csv"))?;
    assert_eq!(log.lines().count(), 5);
    assert!(log
        .lines()
        .nth(2)
        .unwrap()
        .split(',')
        .nth(3)
        .unwrap()
        .parse::<f64>()
        .is_ok());
    assert!(out.join("checkpoint-2/optimizer.safetensors").exists());
    assert!(out.join("final/tokenizer.json").exists());
    assert_eq!(events.iter().filter(|e| *e == "Step").count(), 4);
    assert_eq!(events.iter().filter(|e| *e == "Checkpoint").count(), 3);

    // Resuming from checkpoint-2 into the same folder reproduces the final weights.
    let resume = SftStart::Resume {
        checkpoint: out.join("checkpoint-2"),
        device: Device::Cpu,
        config: sft,
    };
    let (_, final_a) = super::load_model_dir(&out.join("final"), DType::F32, &Device::Cpu)?;
    train_sft(resume, &data, &eval, &out, &extra, &mut |_: &TrainEvent| {})?;
    let (_, final_b) = super::load_model_dir(&out.join("final"), DType::F32, &Device::Cpu)?;
    assert!(max_weight_difference(&final_a, &final_b)? < 1e-6);
    assert_eq!(
        std::fs::read_to_string(out.join("train_log.csv"))?
            .lines()
            .count(),
        5
    );
    Ok(())
}

#[test]
fn non_finite_loss_stops_with_the_step_and_last_checkpoint() -> Result<()> {
    let cfg = tiny_config(true);
    let dir = tempfile::tempdir()?;
    let sft = SftConfig {
        lr: 1e30,
        max_steps: Some(10),
        save_every: 1,
        max_grad_norm: 0.0,
        ..quick_config(Trainable::All)
    };
    let start = SftStart::Fresh {
        model_config: cfg.clone(),
        weights: tiny_weights(&cfg, DType::F32),
        config: sft.clone(),
    };
    let err = train_sft(
        start,
        &dataset(8, 12),
        &[],
        dir.path(),
        &[],
        &mut |_: &TrainEvent| {},
    )
    .unwrap_err();
    let nf = err
        .downcast_ref::<NonFiniteError>()
        .expect("a NonFiniteError");
    assert!(nf.step >= 2, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("at step {}", nf.step)),
        "{message}"
    );
    let last = checkpoint::checkpoint_dir(dir.path(), nf.step - 1);
    assert_eq!(nf.last_checkpoint.as_deref(), Some(last.as_path()));
    assert!(last.join("trainer_state.json").exists());

    // A NaN weight is caught at the first step.
    let mut weights = tiny_weights(&cfg, DType::F32);
    let nan = Tensor::full(f32::NAN, (cfg.hidden_size,), &Device::Cpu)?;
    weights.insert("model.norm.weight".to_string(), nan);
    let mut trainer = SftTrainer::new(
        &cfg,
        weights,
        &dataset(4, 13),
        &[],
        quick_config(Trainable::All),
    )?;
    let err = trainer.train_step().unwrap_err();
    assert!(err.to_string().contains("at step 1"), "{err}");
    Ok(())
}
