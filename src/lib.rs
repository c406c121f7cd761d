//! cai: the Constitutional AI / RLAIF pipeline (Bai et al. 2022; Lee et al. 2023) on real
//! language models: constitution → critique/revision SFT data → AI preference labels →
//! reward model → PPO.

pub mod bench;
pub mod chat;
pub mod cli;
pub mod compare;
pub mod config;
pub mod constitution;
pub mod inputs;
pub mod jsonl;
pub mod llm;
pub mod manifest;
pub mod pairs;
pub mod plot;
pub mod progress;
pub mod prompts;
pub mod revise;
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
        Command::Compare(a) => {
            let cfg = compare::CompareConfig {
                human: a.human,
                ai: a.ai,
                report: a.report,
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
