//! Stage configs resolved once: defaults < `--config` YAML file < command-line flags.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

use crate::cli::{LabelArgs, ReviseArgs, SamplingArgs, ServerArgs};
use crate::label::{LabelConfig, LabelMode};
use crate::llm::openai::OpenaiConfig;
use crate::llm::SamplingParams;
use crate::revise::ReviseConfig;

/// Reads a stage config file; unknown keys and type errors name file:line:column.
pub fn read_yaml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| {
        let loc = e
            .location()
            .map(|l| format!("{}:{}:{}", path.display(), l.line(), l.column()))
            .unwrap_or_else(|| path.display().to_string());
        anyhow::anyhow!("{loc}: {e}")
    })
}

/// Sets `target` when the flag was given.
pub fn set<T>(target: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *target = v;
    }
}

impl ReviseConfig {
    /// The config of a `cai revise` invocation.
    pub fn resolve(args: ReviseArgs) -> Result<Self> {
        let mut c: ReviseConfig = match &args.config {
            Some(p) => read_yaml(p)?,
            None => ReviseConfig::default(),
        };
        set(&mut c.constitution, args.constitution);
        set(&mut c.prompts, args.prompts);
        set(&mut c.out, args.out);
        set(&mut c.rounds, args.rounds);
        set(&mut c.seed, args.seed);
        set(&mut c.backend, args.model.backend);
        set(&mut c.model, args.model.model);
        args.model.server.apply(&mut c.openai);
        c.templates = args.templates.or(c.templates);
        set(&mut c.batch_size, args.batch_size);
        c.limit = args.limit.or(c.limit);
        set(&mut c.few_shot, args.few_shot);
        set(&mut c.max_prompt_tokens, args.max_prompt_tokens);
        set(&mut c.on_long_prompt, args.on_long_prompt);
        for p in [&mut c.answer, &mut c.critique, &mut c.revision] {
            set(&mut p.temperature, args.temperature);
            set(&mut p.max_tokens, args.max_tokens);
            args.sampling.apply(p);
        }
        if !args.formats.is_empty() {
            c.formats = args.formats;
        }
        c.quiet |= args.quiet;
        Ok(c)
    }
}

impl LabelConfig {
    /// The config of a `cai label` invocation.
    pub fn resolve(args: LabelArgs) -> Result<Self> {
        let mut c: LabelConfig = match &args.config {
            Some(p) => read_yaml(p)?,
            None => LabelConfig::default(),
        };
        set(&mut c.constitution, args.constitution);
        set(&mut c.pairs, args.pairs);
        set(&mut c.out, args.out);
        set(&mut c.seed, args.seed);
        set(&mut c.backend, args.model.backend);
        set(&mut c.model, args.model.model);
        args.model.server.apply(&mut c.openai);
        c.templates = args.templates.or(c.templates);
        set(&mut c.mode, args.mode);
        if args.cot {
            c.mode = LabelMode::Cot;
        }
        set(&mut c.principles, args.principles);
        if args.one_order {
            c.both_orders = false;
        }
        c.calibrate = (c.calibrate || args.calibrate) && !args.no_calibrate;
        set(&mut c.few_shot, args.few_shot);
        set(&mut c.samples, args.samples);
        set(&mut c.reasoning.temperature, args.temperature);
        args.sampling.apply(&mut c.reasoning);
        c.clamp = args.clamp.or(c.clamp);
        set(&mut c.max_prompt_tokens, args.max_prompt_tokens);
        c.truncate_long |= args.truncate_long;
        set(&mut c.batch_size, args.batch_size);
        c.limit = args.limit.or(c.limit);
        c.quiet |= args.quiet;
        Ok(c)
    }
}

impl SamplingArgs {
    /// Overrides the options of `params` given on the command line.
    pub fn apply(&self, params: &mut SamplingParams) {
        set(&mut params.top_k, self.top_k);
        set(&mut params.min_p, self.min_p);
        set(&mut params.repetition_penalty, self.repetition_penalty);
        set(&mut params.repeat_last_n, self.repeat_last_n);
        set(&mut params.presence_penalty, self.presence_penalty);
        set(&mut params.frequency_penalty, self.frequency_penalty);
    }
}

impl ServerArgs {
    /// Overrides the fields of `cfg` given on the command line.
    pub fn apply(self, cfg: &mut OpenaiConfig) {
        if !self.base_urls.is_empty() {
            cfg.base_urls = self.base_urls;
        }
        set(&mut cfg.api_key_env, self.api_key_env);
        set(&mut cfg.concurrency, self.concurrency);
        set(&mut cfg.timeout_s, self.timeout);
        set(&mut cfg.connect_timeout_s, self.connect_timeout);
        cfg.ca_cert = self.ca_cert.or(cfg.ca_cert.take());
        set(&mut cfg.prefill, self.prefill);
        set(&mut cfg.option_scoring, self.option_scoring);
        set(&mut cfg.retry.retries, self.retries);
        set(&mut cfg.retry.backoff_s, self.backoff);
        cfg.cache_dir = self.cache_dir.or(cfg.cache_dir.take());
        cfg.no_cache |= self.no_cache;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn revise_args(flags: &[&str]) -> ReviseArgs {
        let argv = ["cai", "revise"].iter().chain(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Revise(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn sampling_flags_reach_every_revise_step() {
        let c = ReviseConfig::resolve(revise_args(&[
            "--top-k",
            "40",
            "--min-p",
            "0.05",
            "--repetition-penalty",
            "1.3",
            "--repeat-last-n",
            "16",
            "--presence-penalty",
            "-0.5",
            "--frequency-penalty",
            "0.25",
        ]))
        .unwrap();
        for p in [&c.answer, &c.critique, &c.revision] {
            assert_eq!(
                (p.top_k, p.min_p, p.repetition_penalty, p.repeat_last_n),
                (40, 0.05, 1.3, 16)
            );
            assert_eq!((p.presence_penalty, p.frequency_penalty), (-0.5, 0.25));
        }
        // Steps keep their own defaults for everything else.
        assert_eq!((c.critique.max_tokens, c.critique.top_p), (96, 0.9));
    }

    #[test]
    fn yaml_sets_some_options_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yaml");
        std::fs::write(&path, "revision: {top_k: 20, repetition_penalty: 1.3}\n").unwrap();
        let file = path.to_str().unwrap();
        let c = ReviseConfig::resolve(revise_args(&["--config", file])).unwrap();
        let d = SamplingParams::default();
        assert_eq!((c.revision.top_k, c.revision.repetition_penalty), (20, 1.3));
        // Keys the file leaves out come from SamplingParams' defaults, flags from nothing.
        assert_eq!(c.revision.repeat_last_n, d.repeat_last_n);
        assert_eq!(c.answer.repetition_penalty, d.repetition_penalty);
        let c = ReviseConfig::resolve(revise_args(&[
            "--config",
            file,
            "--repetition-penalty",
            "1",
        ]))
        .unwrap();
        assert_eq!((c.revision.top_k, c.revision.repetition_penalty), (20, 1.0));
        // An unknown key names its place.
        std::fs::write(&path, "revision: {top_n: 20}\n").unwrap();
        let e = ReviseConfig::resolve(revise_args(&["--config", file])).unwrap_err();
        assert!(format!("{e:#}").contains("r.yaml:1:"), "{e:#}");
    }
}
