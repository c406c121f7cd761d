//! cai: the Constitutional AI / RLAIF pipeline (Bai et al. 2022; Lee et al. 2023) on real
//! language models: constitution → critique/revision SFT data → AI preference labels →
//! reward model → PPO, or DPO on the labels directly.

pub mod bench;
pub mod chat;
pub mod cli;
pub mod cli_dpo;
pub mod cli_eval;
pub mod cli_export;
pub mod cli_pipeline;
pub mod cli_rm;
pub mod cli_train;
pub mod compare;
pub mod config;
pub mod constitution;
pub mod device;
pub mod dpo_pairs;
pub mod dpo_run;
pub mod eval;
pub mod export;
pub mod hash;
pub mod inputs;
pub mod jsonl;
pub mod label;
pub mod labeler_reward;
pub mod llm;
pub mod manifest;
pub mod model_files;
pub mod pairs;
pub mod perplexity;
pub mod pipeline;
pub mod plot;
pub mod ppo_run;
pub mod progress;
pub mod prompts;
pub mod revise;
pub mod rm;
pub mod sample;
pub mod sampling;
pub mod score;
pub mod sft_data;
pub mod sft_run;
pub mod stage;
#[doc(hidden)]
pub mod test_support;
pub mod train;
mod yaml_locate;

use anyhow::Result;

use cli::{Cli, Command, ConstitutionCommand};

/// Runs one command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Revise(args) => {
            let cfg = revise::ReviseConfig::resolve(args)?;
            let s = revise::run(&cfg)?;
            eprintln!(
                "cai: revise: {} written, {} already done, {} skipped (too long), {} truncated -> {}",
                s.written,
                s.resumed,
                s.skipped_long,
                s.truncated,
                cfg.out.display()
            );
            if s.written > 0 {
                eprintln!(
                    "cai: revise: {:.1} prompts/min, {:.1} generated tokens/s",
                    s.written as f64 * 60.0 / s.seconds.max(1e-9),
                    s.generated_tokens as f64 / s.seconds.max(1e-9)
                );
            }
            Ok(())
        }
        Command::Sample(a) => {
            let d = sample::SampleConfig::default();
            let cfg = sample::SampleConfig {
                prompts: a.prompts,
                out: a.out,
                backend: a.model.backend.unwrap_or(d.backend),
                model: a.model.model.unwrap_or(d.model),
                openai: {
                    let mut o = d.openai;
                    a.model.server.apply(&mut o);
                    o
                },
                k: a.best_of.unwrap_or(a.k),
                pairs_per_prompt: a.pairs_per_prompt,
                best_of_rm: a.reward_model,
                sampling: {
                    let mut s = llm::SamplingParams {
                        temperature: a.temperature,
                        top_p: a.top_p,
                        max_tokens: a.max_tokens,
                        ..d.sampling
                    };
                    a.sampling.apply(&mut s);
                    s
                },
                seed: a.seed,
                batch_size: a.batch_size,
                limit: a.limit,
                quiet: a.quiet,
            };
            let s = sample::run(&cfg)?;
            let extra = match (cfg.best_of_rm.is_some(), cfg.k >= 2) {
                (true, _) => format!(
                    " (best responses: {})",
                    cfg.out.with_extension("best.jsonl").display()
                ),
                (false, true) => format!(
                    " (pairs: {})",
                    cfg.out.with_extension("pairs.jsonl").display()
                ),
                (false, false) => String::new(),
            };
            eprintln!(
                "cai: sample: {} written, {} already done, {} skipped -> {}{extra}",
                s.written,
                s.resumed,
                s.skipped_long,
                cfg.out.display(),
            );
            Ok(())
        }
        Command::Label(args) => {
            let cfg = label::LabelConfig::resolve(args)?;
            let s = label::run(&cfg)?;
            eprintln!(
                "cai: label: {} written, {} already done, {} skipped (too long), {} identical -> {}",
                s.written,
                s.resumed,
                s.skipped_long,
                s.identical,
                cfg.out.display()
            );
            if s.written > 0 {
                eprintln!(
                    "cai: label: {:.3} pairs/s",
                    s.written as f64 / s.seconds.max(1e-9)
                );
            }
            Ok(())
        }
        Command::Compare(a) => {
            let cfg = compare::CompareConfig {
                human: a.human,
                ai: a.ai,
                report: a.out,
                bootstrap: a.bootstrap,
                seed: a.seed,
                bins: a.bins,
            };
            let report = compare::run(&cfg)?;
            print!("{}", compare::report::render_table(&report));
            if let Some(dir) = &cfg.report {
                eprintln!(
                    "cai: compare: report written to {}",
                    dir.join("report.md").display()
                );
            }
            Ok(())
        }
        Command::Bench(a) => {
            let cfg = bench::BenchConfig {
                model: a.model,
                prompt_tokens: a.prompt_tokens,
                gen_tokens: a.gen_tokens,
                repeats: a.repeats,
                batches: a.batches,
                pairs: a.pairs,
                label_pairs: a.label_pairs,
                train_steps: a.train_steps,
                compare_quantized: a.quantized_only,
                peer_bin: a.peer_bin,
                json: a.json,
            };
            print!("{}", bench::render(&bench::run(&cfg)?));
            Ok(())
        }
        Command::Perplexity(a) => {
            let cfg = perplexity::PerplexityConfig {
                model: a.model,
                file: a.file,
                ctx: a.ctx,
                chunks: a.chunks,
                quiet: a.quiet,
            };
            let r = perplexity::run(&cfg)?;
            let chunks: Vec<String> = r
                .per_chunk
                .iter()
                .enumerate()
                .map(|(i, p)| format!("[{}]{p:.4}", i + 1))
                .collect();
            println!("{}", chunks.join(","));
            println!(
                "{} tokens, {} chunks of {}, {} scored",
                r.tokens, r.chunks, r.ctx, r.sums.count
            );
            println!("{}", r.final_line());
            Ok(())
        }
        Command::Train(cli_train::TrainCommand::Sft(args)) => {
            let cfg = sft_run::SftRunConfig::resolve(args)?;
            let s = sft_run::run(&cfg)?;
            let loss = |l: Option<f64>| l.map_or("-".to_string(), |l| format!("{l:.4}"));
            eprintln!(
                "cai: train sft: {} steps on {} examples ({} held out), held-out loss {} -> {}, \
                 {:.0} tokens/s -> {}",
                s.steps,
                s.train_examples,
                s.eval_examples,
                loss(s.eval_loss_before),
                loss(s.eval_loss_after),
                s.tokens_per_s,
                s.final_dir.display()
            );
            Ok(())
        }
        Command::Train(cli_train::TrainCommand::Rm(args)) => {
            let cfg = rm::TrainRmConfig::resolve(args)?;
            let s = rm::run(&cfg)?;
            eprintln!(
                "cai: train rm: {} steps on {} pairs ({:.2} pairs/s, {:.0} tokens/s) -> {}",
                s.steps,
                s.train_pairs,
                s.pairs_per_s,
                s.tokens_per_s,
                s.final_dir.display()
            );
            if let Some(e) = &s.eval {
                println!(
                    "held-out: {} pairs, accuracy {:.4}, ECE {}, loss {:.4}, reward chosen {:.3}±{:.3}, rejected {:.3}±{:.3}",
                    e.pairs,
                    e.accuracy,
                    e.ece.map_or("-".into(), |x| format!("{x:.4}")),
                    e.loss,
                    e.chosen.mean,
                    e.chosen.std,
                    e.rejected.mean,
                    e.rejected.std
                );
            }
            Ok(())
        }
        Command::Train(cli_train::TrainCommand::Dpo(args)) => {
            let cfg = dpo_run::TrainDpoConfig::resolve(args)?;
            let s = dpo_run::run(&cfg)?;
            eprintln!(
                "cai: train dpo: {} steps on {} pairs ({} loss, β {}; {:.2} pairs/s, {:.0} \
                 tokens/s) -> {}",
                s.steps,
                s.train_pairs,
                cfg.loss,
                cfg.beta,
                s.pairs_per_s,
                s.tokens_per_s,
                s.final_dir.display()
            );
            if let (Some(a), Some(b)) = (&s.eval_before, &s.eval_after) {
                println!(
                    "held-out: {} pairs, implicit-reward accuracy {:.4} -> {:.4}, margin {:.4} \
                     -> {:.4}, log-prob accuracy {:.4} -> {:.4}, drift chosen {:.3}, rejected \
                     {:.3} nats",
                    b.pairs,
                    a.accuracy,
                    b.accuracy,
                    a.margin,
                    b.margin,
                    a.logp_accuracy,
                    b.logp_accuracy,
                    b.chosen_drift,
                    b.rejected_drift
                );
            }
            Ok(())
        }
        Command::Train(cli_train::TrainCommand::Ppo(args)) => {
            let cfg = ppo_run::PpoRunConfig::resolve(args)?;
            let s = ppo_run::run(&cfg)?;
            if let (Some(a), Some(b)) = (&s.first, &s.last) {
                eprintln!(
                    "cai: train ppo: {} steps on {} prompts; score {:.3} -> {:.3}, KL {:.3} -> \
                     {:.3}, response length {:.1} -> {:.1}; {:.1} s/step -> {}",
                    s.steps,
                    s.prompts,
                    a.score,
                    b.score,
                    a.kl,
                    b.kl,
                    a.response_len,
                    b.response_len,
                    s.seconds_per_step,
                    s.final_dir.display()
                );
            }
            if !s.repeated_phrases.is_empty() {
                let top: Vec<String> = s
                    .repeated_phrases
                    .iter()
                    .map(|(p, n)| format!("\"{p}\" ×{n}"))
                    .collect();
                eprintln!(
                    "cai: train ppo: most repeated phrases of the last step: {}",
                    top.join(", ")
                );
            }
            Ok(())
        }
        Command::Eval(args) => {
            let cfg = eval::EvalConfig::resolve(args)?;
            let r = eval::run(&cfg)?;
            let w = r.labeler_win_rate;
            eprintln!(
                "cai: eval: {} pairs; A wins {:.1} % [{:.1}, {:.1}] by the AI labeler ({} ties: \
                 |P(A) - 0.5| <= {}){} -> {}",
                r.pairs,
                100.0 * w.rate,
                100.0 * w.low,
                100.0 * w.high,
                r.labeler_ties,
                r.tie_margin,
                r.reward_win_rate
                    .map(|w| format!(
                        ", {:.1} % [{:.1}, {:.1}] by reward",
                        100.0 * w.rate,
                        100.0 * w.low,
                        100.0 * w.high
                    ))
                    .unwrap_or_default(),
                cfg.out.join("report.md").display()
            );
            Ok(())
        }
        Command::Score(args) => {
            let s = score::run(&args)?;
            eprintln!("cai: score: {} rows -> {}", s.rows, args.out.display());
            if let Some(acc) = s.accuracy {
                println!("accuracy against human labels: {acc:.4}");
            }
            Ok(())
        }
        Command::Export(a) => cli_export::run(a),
        Command::Pipeline(a) => cli_pipeline::run(a),
        Command::Constitution(ConstitutionCommand::Check { files }) => constitution_check(&files),
        Command::Constitution(ConstitutionCommand::Show { file }) => {
            let loaded = constitution::Loaded::read_valid(&file)?;
            print!("{}", constitution::describe(&loaded.constitution));
            Ok(())
        }
    }
}

fn constitution_check(files: &[std::path::PathBuf]) -> Result<()> {
    let mut bad = 0;
    for f in files {
        match constitution::Loaded::read(f) {
            Err(e) => {
                println!("{e:#}");
                bad += 1;
            }
            Ok(loaded) => {
                let problems = loaded.validate();
                if problems.is_empty() {
                    let c = &loaded.constitution;
                    println!(
                        "{}: ok ({} principles, {} comparison principles, {} + {} examples)",
                        f.display(),
                        c.principles.len(),
                        c.comparison_principles.len(),
                        c.examples.revision.len(),
                        c.examples.comparison.len()
                    );
                } else {
                    println!("{}", loaded.format_problems(&problems));
                    bad += 1;
                }
            }
        }
    }
    if bad > 0 {
        anyhow::bail!(
            "{bad} of {} constitution file(s) have problems",
            files.len()
        );
    }
    Ok(())
}
