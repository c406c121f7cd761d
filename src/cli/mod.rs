//! The command line: flags → configs, in one place. Each subcommand has a file with its
//! arguments (doc comments are the `--help`), where each flag goes in the stage config
//! ([`overlay::Flags`]; by default the key of the flag's name) and a `run` that calls its stage
//! and prints the summary. Resolution is one generic function for all: [`overlay::resolve`]
//! (the stage config's `Default` < the `--config` YAML file < the flags given).
//! Nothing outside this module sees clap or raw arguments.

pub mod args;
pub mod bench;
pub mod compare;
pub mod constitution;
pub mod dpo;
pub mod eval;
pub mod export;
pub mod help_defaults;
pub mod label;
pub mod overlay;
pub mod perplexity;
pub mod pipeline;
pub mod ppo;
pub mod revise;
pub mod rm;
pub mod sample;
pub mod score;
pub mod sft;
pub mod train;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use help_defaults::Source;

/// The environment variables cai reads, for `cai --help` (a test checks that every `CAI_*`
/// name in src/ is here).
pub const ENVIRONMENT: &str = "\
Flags override the --config YAML, which overrides the defaults; a flag's name is its config
key (nested keys by their last part: --timeout-s is openai.timeout_s). Every switch has an
opposite (--quiet / --no-quiet, --no-cache / --cache) that undoes the --config file's value;
of the two, the last given wins.

Environment:
  CAI_DEVICE=auto|cpu|cuda  Where models run (CUDA builds): auto (default) takes the first GPU
                            when there is one, cpu forces the CPU, cuda makes a missing GPU an
                            error instead of a fall-back to the CPU.
  CAI_KERNELS=avx2          On an AVX-512 VNNI CPU, run the quantized matmuls' AVX2 tiles
                            instead (what a CPU without VNNI runs; to compare their speed).
  CAI_PREFIX_REUSE=0        Turn off the local engine's cache of shared prompt prefixes (the
                            results are the same; to measure what it saves).
  CAI_MODELS=DIR            Folder searched first for the default model (then ./models and
                            ~/.cache/cai/models).
  CAI_DEBUG=1               Errors with backtraces, as --verbose.
  CAI_TEST_GGUF=FILE        Tests only: the GGUF of the real-model unit tests.
  CAI_REQUIRE_MODEL=1       Tests only: a missing real model fails a test instead of skipping
                            it.
  Proxies: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY (--backend openai); the CA
  certificates: SSL_CERT_FILE (unless --ca-cert).";

/// cai: the Constitutional AI / RLAIF pipeline on real language models.
#[derive(Debug, Parser)]
#[command(name = "cai", version, about, long_about = None, after_help = ENVIRONMENT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Errors with the backtraces libraries captured (as does CAI_DEBUG=1); without it an
    /// error is one line, whatever RUST_BACKTRACE says.
    #[arg(short, long, global = true, display_order = 1000)]
    pub verbose: bool,
    /// The parsed command line: which flags were given (see [`overlay`]).
    #[arg(skip)]
    pub matches: clap::ArgMatches,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Critique → revision loops on red-team prompts: writes an SFT data set.
    Revise(revise::ReviseArgs),
    /// K responses per prompt from a policy model, and the pairs among them for labelling.
    Sample(sample::SampleArgs),
    /// AI preference labels: which of two responses is better under sampled principles.
    Label(label::LabelArgs),
    /// AI preference labels against human labels: agreement, kappa, calibration, position
    /// bias, per principle; optional Markdown report with plots.
    Compare(compare::CompareArgs),
    /// Speed of the local backend (prompt, generation, batches, labelling, training) and of
    /// llama.cpp when installed, in one run.
    Bench(bench::BenchArgs),
    /// Perplexity of a model on a text, computed as llama.cpp's llama-perplexity does
    /// (chunks of --ctx tokens, the second half of each scored); ends with `PPL = X +/- E`.
    Perplexity(perplexity::PerplexityArgs),
    /// Two policies answer held-out prompts; the AI labeler (both orders) and the reward
    /// model judge: win rates with 95 % intervals and a Markdown report.
    Eval(eval::EvalArgs),
    /// Train a model: `cai train sft` (SL-CAI), `rm` (reward model), `ppo` (PPO, GRPO, RLOO,
    /// REINFORCE) or `dpo`.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Stage outputs as TRL / OpenRLHF training sets (SFT or preference).
    Export(export::ExportArgs),
    /// Check or list a constitution.
    #[command(subcommand)]
    Constitution(constitution::ConstitutionCommand),
    /// Rewards of pairs or single responses from a trained reward model, as JSONL.
    Score(score::ScoreArgs),
    /// The whole run in one command: revise → sft → sample → label → rm → dpo / ppo / grpo →
    /// eval, each stage's outputs in a run folder, done stages skipped on re-run, an
    /// interrupted one resumed, and a report.md.
    Pipeline(pipeline::PipelineArgs),
}

/// The subcommands whose flags have defaults in a stage config, by path (`train sft`), with
/// that config's defaults as JSON and where `--help` finds the flags not under their own name.
type HelpDefaults = (
    &'static [&'static str],
    serde_json::Value,
    Vec<(&'static str, Source)>,
);

fn help_defaults() -> Vec<HelpDefaults> {
    fn json<T: Serialize>(
        path: &'static [&'static str],
        (config, sources): (T, Vec<(&'static str, Source)>),
    ) -> HelpDefaults {
        let value = serde_json::to_value(config).expect("configs serialise");
        (path, value, sources)
    }
    vec![
        json(&["revise"], revise::help_defaults()),
        json(&["sample"], sample::help_defaults()),
        json(&["label"], label::help_defaults()),
        json(&["compare"], compare::help_defaults()),
        json(&["bench"], bench::help_defaults()),
        json(&["perplexity"], perplexity::help_defaults()),
        json(&["eval"], eval::help_defaults()),
        json(&["export"], export::help_defaults()),
        json(&["score"], score::help_defaults()),
        json(&["train", "sft"], sft::help_defaults()),
        json(&["train", "rm"], rm::help_defaults()),
        json(&["train", "ppo"], ppo::help_defaults()),
        json(&["train", "dpo"], dpo::help_defaults()),
    ]
}

/// The clap command with every flag's default in its help, and the flags whose default could
/// not be told (see [`help_defaults::annotate`]).
pub fn command_with_ambiguities() -> (clap::Command, Vec<String>) {
    let mut cmd = args::finite_floats(Cli::command());
    let mut ambiguous = Vec::new();
    for (path, defaults, sources) in help_defaults() {
        let annotate = |sub: clap::Command| {
            let (sub, amb) = help_defaults::annotate(sub, &defaults, &sources);
            ambiguous.extend(
                amb.into_iter()
                    .map(|id| format!("{}: {id}", path.join(" "))),
            );
            sub
        };
        cmd = match path {
            [name] => cmd.mut_subcommand(*name, annotate),
            [group, name] => cmd.mut_subcommand(*group, |g| g.mut_subcommand(*name, annotate)),
            _ => unreachable!("subcommands are one or two words deep"),
        };
    }
    (cmd, ambiguous)
}

/// The clap command with every flag's default in its help.
pub fn command() -> clap::Command {
    command_with_ambiguities().0
}

/// Parses the process's arguments (exits with clap's message on an error or `--help`).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.matches = matches;
    cli
}

/// The matches of the innermost subcommand (`train sft`'s, not `train`'s).
fn leaf(m: &clap::ArgMatches) -> &clap::ArgMatches {
    match m.subcommand() {
        Some((_, sub)) => leaf(sub),
        None => m,
    }
}

/// The stage config the command line `argv` (without the program name) resolves to, as JSON:
/// what the subcommand would run with (for tests and checks; nothing is run).
pub fn resolved_config(argv: &[&str]) -> Result<serde_json::Value> {
    fn json<A: overlay::Flags>(m: &clap::ArgMatches) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(overlay::resolve::<A>(m)?)?)
    }
    let matches =
        command().try_get_matches_from(std::iter::once("cai").chain(argv.iter().copied()))?;
    let cli = Cli::from_arg_matches(&matches)?;
    let m = leaf(&matches);
    match cli.command {
        Command::Revise(_) => json::<revise::ReviseArgs>(m),
        Command::Sample(_) => json::<sample::SampleArgs>(m),
        Command::Label(_) => json::<label::LabelArgs>(m),
        Command::Compare(_) => json::<compare::CompareArgs>(m),
        Command::Bench(_) => json::<bench::BenchArgs>(m),
        Command::Perplexity(_) => json::<perplexity::PerplexityArgs>(m),
        Command::Eval(_) => json::<eval::EvalArgs>(m),
        Command::Export(_) => json::<export::ExportArgs>(m),
        Command::Score(_) => json::<score::ScoreArgs>(m),
        Command::Train(train::TrainCommand::Sft(_)) => json::<sft::SftArgs>(m),
        Command::Train(train::TrainCommand::Rm(_)) => json::<rm::RmArgs>(m),
        Command::Train(train::TrainCommand::Ppo(_)) => json::<ppo::PpoArgs>(m),
        Command::Train(train::TrainCommand::Dpo(_)) => json::<dpo::DpoArgs>(m),
        Command::Constitution(_) | Command::Pipeline(_) => {
            anyhow::bail!("`{}` has no stage config", argv.first().unwrap_or(&""))
        }
    }
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<()> {
    let m = leaf(&cli.matches);
    match cli.command {
        Command::Revise(_) => revise::run(m),
        Command::Sample(_) => sample::run(m),
        Command::Label(_) => label::run(m),
        Command::Compare(_) => compare::run(m),
        Command::Bench(_) => bench::run(m),
        Command::Perplexity(_) => perplexity::run(m),
        Command::Eval(_) => eval::run(m),
        Command::Train(t) => t.run(m),
        Command::Export(_) => export::run(m),
        Command::Constitution(c) => c.run(),
        Command::Score(_) => score::run(m),
        Command::Pipeline(a) => pipeline::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every valued flag's default is found (or named by its subcommand), and clap accepts the
    /// command as built.
    #[test]
    fn every_default_in_help_is_found_in_a_config() {
        let (mut cmd, ambiguous) = command_with_ambiguities();
        assert!(ambiguous.is_empty(), "{ambiguous:?}");
        cmd.build();
        cmd.debug_assert();
    }

    fn help(path: &[&str]) -> String {
        let mut cmd = command();
        let mut sub = &mut cmd;
        for name in path {
            sub = sub.find_subcommand_mut(name).unwrap();
        }
        sub.render_help().to_string()
    }

    /// Every `CAI_*` variable named in src/ (read with `std::env::var`) is listed in `cai
    /// --help`.
    #[test]
    fn every_environment_variable_is_in_the_help() {
        fn names(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    names(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for (i, _) in text.match_indices("\"CAI_") {
                        let name: String = text[i + 1..]
                            .chars()
                            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                            .collect();
                        if name.len() > "CAI_".len() {
                            out.insert(name);
                        }
                    }
                }
            }
        }
        let mut found = std::collections::BTreeSet::new();
        names(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut found,
        );
        for must in ["CAI_DEVICE", "CAI_KERNELS", "CAI_PREFIX_REUSE", "CAI_DEBUG"] {
            assert!(found.contains(must), "{must} not found in src/: {found:?}");
        }
        let help = command().render_help().to_string();
        for name in &found {
            assert!(
                help.contains(&format!("{name}=")),
                "{name} not in cai --help"
            );
        }
    }

    /// The help shows the defaults of the `Default` impls, e.g. after a default changes.
    #[test]
    fn help_shows_the_config_defaults() {
        let revise = help(&["revise"]);
        let d = crate::stages::revise::ReviseConfig::default();
        assert!(
            revise.contains(&format!("[default: {}]", d.rounds)),
            "{revise}"
        );
        assert!(revise.contains("[default: answer 128, critique 96, revision 128]"));
        let ppo = help(&["train", "ppo"]);
        let p = crate::stages::ppo::PpoRunConfig::default();
        assert!(
            ppo.contains(&format!("[default: {}]", p.ppo.max_new_tokens)),
            "{ppo}"
        );
        assert!(ppo.contains("[default: top-layers 2]"), "{ppo}");
        let rm = help(&["train", "rm"]);
        assert!(
            rm.contains("[default: 0.1]") && rm.contains("[default: 512]"),
            "{rm}"
        );
        let label = help(&["label"]);
        assert!(label.contains("[default: direct]"), "{label}");
        assert!(
            label.contains("[default: constitutions/harmless.yaml]"),
            "{label}"
        );
    }
}
