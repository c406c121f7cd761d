//! Stage configs resolved once: defaults < `--config` YAML file < command-line flags.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

use crate::cli::{LabelArgs, ReviseArgs, ServerArgs};
use crate::label::{LabelConfig, LabelMode};
use crate::llm::openai::OpenaiConfig;
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
        c.clamp = args.clamp.or(c.clamp);
        set(&mut c.max_prompt_tokens, args.max_prompt_tokens);
        c.truncate_long |= args.truncate_long;
        set(&mut c.batch_size, args.batch_size);
        c.limit = args.limit.or(c.limit);
        c.quiet |= args.quiet;
        Ok(c)
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
        set(&mut cfg.retry.retries, self.retries);
        set(&mut cfg.retry.backoff_s, self.backoff);
        cfg.cache_dir = self.cache_dir.or(cfg.cache_dir.take());
        cfg.no_cache |= self.no_cache;
    }
}
