//! `--backend openai`: any OpenAI-compatible server (vLLM, llama.cpp server, mistralrs-server,
//! Ollama) as a [`Backend`], so every stage can label or revise at data-centre scale.
//!
//! - generate → `/v1/chat/completions`, one sample per HTTP request (see [`wire`]).
//! - choose → per [`OptionScoring`]: the first token's `top_logprobs` of a chat completion
//!   (exact for an option that is one token the server lists), or the prompt's own
//!   log-probabilities from `/v1/completions` with `echo` (vLLM), summed over the option's
//!   tokens (exact for options of any length); `auto` tries the first and falls back to the
//!   second. Never "missing = 0": an option neither can score is a clear error.
//! - count_tokens → llama.cpp's `/apply-template` + `/tokenize`, or vLLM's chat `/tokenize`;
//!   without either, an estimate ([`wire::estimate_tokens`]), counted in [`Backend::stats`].
//!
//! Requests run on at most `concurrency` threads, spread over the servers, with retries
//! ([`client`]) and a disk cache ([`cache`]), over HTTP or HTTPS ([`transport`]). The API key
//! is read from an environment variable and sent in the `Authorization` header only: never
//! printed, cached (the cache key is model, endpoint and body) or written to a manifest.
//!
//! A server's "context length exceeded" answer (HTTP 400 from OpenAI, vLLM, llama.cpp, TGI)
//! becomes a [`super::backend::ContextOverflow`], so stages skip that record with a warning.

mod base_url;
mod cache;
mod client;
mod transport;
mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use cache::default_dir as default_cache_dir;
pub use client::RetryPolicy;

use super::backend::{Backend, Choice, ChoiceRequest, GenerateRequest, Generation};
use crate::chat::Prompt;
use crate::manifest::ModelInfo;
use base_url::BaseUrl;
use cache::RequestCache;
use client::{Client, HttpStatus};
use transport::{ApiKey, Transport, TransportConfig};

/// Settings of the openai backend (`--base-url`, `--concurrency`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenaiConfig {
    /// Server roots (`http://host:port` or `https://…`, with or without the trailing `/v1`,
    /// behind a path prefix or not); requests are spread over them in turn.
    pub base_urls: Vec<String>,
    /// Environment variable holding the API key (sent as a bearer token when set).
    pub api_key_env: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Longest wait for a whole answer in seconds (connecting, sending, reading it all).
    pub timeout_s: f64,
    /// Longest wait for a connection in seconds, TLS handshake included.
    pub connect_timeout_s: f64,
    /// PEM file of the CA certificates to trust instead of the built-in (webpki) roots;
    /// without it `$SSL_CERT_FILE` is read when set.
    pub ca_cert: Option<PathBuf>,
    pub retry: RetryPolicy,
    /// How a prefill (the text a reply must start with, e.g. "The answer is (" before the
    /// options are scored) reaches the server.
    pub prefill: PrefillMode,
    /// How answer options (the labeler's "A"/"B", score mode's " 1/10" … " 10/10") are scored.
    pub option_scoring: OptionScoring,
    /// Request cache folder [default: ~/.cache/cai/requests].
    pub cache_dir: Option<PathBuf>,
    pub no_cache: bool,
}

impl Default for OpenaiConfig {
    fn default() -> Self {
        Self {
            base_urls: Vec::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            concurrency: 64,
            timeout_s: 600.0,
            connect_timeout_s: 10.0,
            ca_cert: None,
            prefill: PrefillMode::Auto,
            option_scoring: OptionScoring::Auto,
            retry: RetryPolicy::default(),
            cache_dir: None,
            no_cache: false,
        }
    }
}

/// How a prefill reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrefillMode {
    /// `instruct` for api.openai.com, `continue` for every other server.
    #[default]
    Auto,
    /// A final, partial assistant message the server continues (llama.cpp server, Ollama;
    /// vLLM with `continue_final_message`).
    Continue,
    /// Folded into the last user message as "reply with only the continuation of: …"
    /// (api.openai.com cannot continue an assistant message; the options are then scored as
    /// the first token of a new reply, an approximation of the local backend's exact scores).
    Instruct,
}

impl crate::choice::Choice for PrefillMode {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "auto",
            Self::Auto,
            "instruct for api.openai.com, continue for every other server",
        ),
        (
            "continue",
            Self::Continue,
            "a partial assistant message the server continues (llama.cpp server, Ollama, vLLM)",
        ),
        (
            "instruct",
            Self::Instruct,
            "folded into the user turn as \"reply with only the continuation\"",
        ),
    ];
}

/// How the log-probabilities of answer options are read from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OptionScoring {
    /// `first-token` when every option is one of the tokens the chat answer lists, else
    /// `echo` for that request (never with `--prefill instruct`, whose prompt is rephrased).
    #[default]
    Auto,
    /// The first token's `top_logprobs` (at most 20) of a chat completion: exact for options
    /// that are a single token the server lists, an error for any other.
    FirstToken,
    /// `/v1/completions` with `echo` and `logprobs` (vLLM also answers `prompt_logprobs`) on
    /// the chat prompt rendered by the server's tokenizer endpoint, followed by each option:
    /// the sum of the option tokens' log-probabilities, exact for any length. One request per
    /// option, plus the tokenizer's. vLLM supports it; llama.cpp's server (which returns only
    /// generated tokens' log-probabilities) and api.openai.com do not: a clear error.
    Echo,
}

impl crate::choice::Choice for OptionScoring {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "auto",
            Self::Auto,
            "first-token when the chat answer lists every option, else echo",
        ),
        (
            "first-token",
            Self::FirstToken,
            "the chat answer's top 20 first-token log-probabilities (one-token options)",
        ),
        (
            "echo",
            Self::Echo,
            "the options' own tokens through /v1/completions with echo (vLLM): any length",
        ),
    ];
}

/// How this server counts tokens, found on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tokenizer {
    /// llama.cpp: `/apply-template` renders the chat, `/tokenize` counts it.
    ApplyTemplate,
    /// vLLM: `/tokenize` with `messages`.
    ChatTokenize,
    /// Neither: [`wire::estimate_tokens`].
    Estimate,
}

pub struct OpenaiBackend {
    info: ModelInfo,
    client: Client,
    cache: Option<RequestCache>,
    concurrency: usize,
    tokenizer: OnceLock<Tokenizer>,
    estimated_counts: AtomicU64,
    /// Choices scored through `/v1/completions` ([`OptionScoring::Echo`]).
    echo_choices: AtomicU64,
    /// Prefills are folded into the user turn ([`PrefillMode::Instruct`]).
    instruct: bool,
    option_scoring: OptionScoring,
}

impl OpenaiBackend {
    /// Connects to the servers; `model` = `default` takes the first model the server lists.
    pub fn open(cfg: &OpenaiConfig, model: &str) -> Result<Self> {
        if cfg.base_urls.is_empty() {
            bail!(
                "--backend openai needs at least one --base-url (e.g. http://127.0.0.1:8000 or \
                 https://api.openai.com/v1)"
            );
        }
        if cfg.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        let servers = cfg
            .base_urls
            .iter()
            .map(|u| BaseUrl::parse(u).map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        let api_key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.is_empty())
            .map(ApiKey::new);
        for (what, s) in [
            ("--timeout-s", cfg.timeout_s),
            ("--connect-timeout-s", cfg.connect_timeout_s),
        ] {
            if !(s > 0.0 && s.is_finite()) {
                bail!("{what} must be a positive number of seconds, not {s}");
            }
        }
        let timeout = Duration::from_secs_f64(cfg.timeout_s);
        let transport = Transport::new(
            &TransportConfig {
                timeout,
                connect_timeout: Duration::from_secs_f64(cfg.connect_timeout_s),
                ca_cert: cfg.ca_cert.clone(),
                pool: cfg.concurrency,
            },
            api_key,
        )?;
        let instruct = match cfg.prefill {
            PrefillMode::Instruct => true,
            PrefillMode::Continue => false,
            PrefillMode::Auto => servers
                .iter()
                .any(|s| s.authority.eq_ignore_ascii_case("api.openai.com")),
        };
        let client = Client::new(servers, transport, timeout, cfg.retry.clone());
        let server = client.server_name();
        let models = client
            .call("/v1/models", None)
            .with_context(|| format!("cannot list the models of {server}"))?;
        let listed = models["data"].as_array().cloned().unwrap_or_default();
        let entry = if model == "default" {
            listed
                .first()
                .cloned()
                .with_context(|| format!("{server}/v1/models lists no model; pass --model NAME"))?
        } else {
            listed
                .iter()
                .find(|m| m["id"].as_str() == Some(model))
                .cloned()
                .unwrap_or_else(|| json!({"id": model}))
        };
        let name = entry["id"].as_str().unwrap_or(model).to_string();
        let cache = match (cfg.no_cache, &cfg.cache_dir) {
            (true, _) => None,
            (false, Some(d)) => Some(RequestCache::open(d)?),
            (false, None) => Some(RequestCache::open(&cache::default_dir())?),
        };
        let context = context_size(&client, &entry);
        Ok(Self {
            info: ModelInfo {
                backend: "openai".into(),
                name,
                sha256: None,
                context,
            },
            client,
            cache,
            concurrency: cfg.concurrency,
            tokenizer: OnceLock::new(),
            estimated_counts: AtomicU64::new(0),
            echo_choices: AtomicU64::new(0),
            instruct,
            option_scoring: cfg.option_scoring,
        })
    }

    /// A cached or fresh answer of `path` for `body`.
    fn call(&self, path: &str, body: &Value) -> Result<Value> {
        self.call_complete(path, body, |_| true)
    }

    /// A cached or fresh answer of `path` for `body` that `complete` accepts. An answer it
    /// rejects (a chat answer without the `logprobs` asked for, from a server that dropped
    /// them once) is retried like a failed request and never cached; once the retries are
    /// spent the last such answer is returned, for the caller's own error.
    fn call_complete(
        &self,
        path: &str,
        body: &Value,
        complete: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let key = self
            .cache
            .as_ref()
            .map(|_| RequestCache::key(&self.info.name, path, body));
        if let (Some(c), Some(k)) = (&self.cache, &key) {
            if let Some(hit) = c.get(k).filter(|a| complete(a)) {
                return Ok(hit);
            }
        }
        let mut attempt = 0;
        loop {
            let answer = self.client.call(path, Some(body))?;
            if complete(&answer) {
                if let (Some(c), Some(k)) = (&self.cache, &key) {
                    c.put(k, &answer)?;
                }
                return Ok(answer);
            }
            self.client
                .counters
                .incomplete_answers
                .fetch_add(1, Ordering::Relaxed);
            if !self.client.pause_before_retry(attempt) {
                return Ok(answer);
            }
            attempt += 1;
        }
    }

    /// A server's "context length exceeded" refusal as a [`ContextOverflow`] (stages skip such
    /// a record with a warning); any other error unchanged.
    fn overflow_or(&self, e: anyhow::Error) -> anyhow::Error {
        match e
            .downcast_ref::<HttpStatus>()
            .and_then(|s| wire::context_overflow(s.status, &s.body, self.info.context))
        {
            Some(o) => anyhow::Error::new(o).context(e.to_string()),
            None => e,
        }
    }

    /// Runs `f` over `items` on at most `concurrency` threads, results in input order.
    fn fan_out<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<std::sync::Mutex<Option<R>>> =
            items.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..self.concurrency.min(items.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *slots[i].lock().expect("no thread panics holding a slot") = Some(r);
                });
            }
        });
        slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .expect("no thread panics holding a slot")
                    .expect("every slot is filled")
            })
            .collect()
    }

    /// The prompt as this server gets it (see [`PrefillMode`]).
    fn sent_prompt(&self, prompt: &Prompt) -> Prompt {
        match self.instruct {
            true => wire::instruct_prefill(prompt),
            false => prompt.clone(),
        }
    }

    fn generate_one(&self, req: &GenerateRequest) -> Result<Generation> {
        let req = &GenerateRequest {
            prompt: self.sent_prompt(&req.prompt),
            ..req.clone()
        };
        let mut completions = Vec::with_capacity(req.n);
        let mut prompt_tokens = 0;
        for i in 0..req.n.max(1) {
            let body = wire::chat_body(&self.info.name, req, i);
            let answer = self
                .call("/v1/chat/completions", &body)
                .map_err(|e| self.overflow_or(e))?;
            let (c, p) = wire::parse_chat(&answer)
                .with_context(|| format!("{}/v1/chat/completions", self.client.server_name()))?;
            completions.push(c);
            prompt_tokens = p;
        }
        Ok(Generation {
            prompt_tokens,
            completions,
        })
    }

    fn choose_one(&self, req: &ChoiceRequest) -> Result<Choice> {
        match (self.option_scoring, self.instruct) {
            (OptionScoring::FirstToken, _) | (OptionScoring::Auto, true) => {
                self.choose_first_token(req)
            }
            (OptionScoring::Echo, _) => self.choose_echo(req),
            (OptionScoring::Auto, false) => match self.choose_first_token(req) {
                Err(e) if e.downcast_ref::<wire::NotListed>().is_some() => {
                    self.choose_echo(req).map_err(|echo| {
                        // An overflow stays one, for the stage to skip the record.
                        if echo
                            .downcast_ref::<super::backend::ContextOverflow>()
                            .is_some()
                        {
                            return echo;
                        }
                        anyhow::anyhow!(
                            "{e}; scoring it exactly through /v1/completions failed too: {echo:#}"
                        )
                    })
                }
                other => other,
            },
        }
    }

    /// Options as the first token of a chat answer ([`OptionScoring::FirstToken`]).
    fn choose_first_token(&self, req: &ChoiceRequest) -> Result<Choice> {
        let body = wire::choice_body(&self.info.name, &self.sent_prompt(&req.prompt));
        let answer = self
            .call_complete("/v1/chat/completions", &body, wire::has_top_logprobs)
            .map_err(|e| self.overflow_or(e))?;
        let server = format!("{}/v1/chat/completions", self.client.server_name());
        let logprobs = wire::parse_choice(&answer, &req.options, &server)?;
        Ok(Choice {
            logprobs,
            prompt_tokens: answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
        })
    }

    /// Options scored as part of the prompt through `/v1/completions` ([`OptionScoring::Echo`]).
    fn choose_echo(&self, req: &ChoiceRequest) -> Result<Choice> {
        self.echo_choices.fetch_add(1, Ordering::Relaxed);
        let server = self.client.server_name();
        let how = self.tokenizer(&req.prompt)?;
        if how == Tokenizer::Estimate {
            bail!(
                "{server} has no tokenizer endpoint (vLLM's /tokenize, llama.cpp's \
                 /apply-template), which exact option scoring through /v1/completions needs"
            );
        }
        let prompt = self
            .token_ids(how, &req.prompt)
            .with_context(|| format!("tokenizing the prompt on {server}"))?;
        let mut options = Vec::with_capacity(req.options.len());
        for option in &req.options {
            let full = Prompt {
                prefill: format!("{}{option}", req.prompt.prefill),
                ..req.prompt.clone()
            };
            let tokens = self
                .token_ids(how, &full)
                .with_context(|| format!("tokenizing option `{option}` on {server}"))?;
            options.push((option, tokens));
        }
        // Every option is scored from the same position, the shortest prefix the prompt
        // shares with any option: where "(" + "A" merges into one token but "(" + "B" does
        // not, B's score includes the "(" term too, as A's does.
        let start = options
            .iter()
            .map(|(_, tokens)| wire::common_prefix(&prompt, tokens))
            .min()
            .unwrap_or(0)
            .max(1);
        let mut logprobs = Vec::with_capacity(options.len());
        for (option, tokens) in options {
            if start >= tokens.len() {
                bail!("{server}: option `{option}` adds no token to the prompt");
            }
            let body = wire::echo_body(&self.info.name, &tokens);
            let answer = self
                .call_complete("/v1/completions", &body, wire::has_prompt_logprobs)
                .map_err(|e| self.overflow_or(e))?;
            logprobs.push(
                wire::parse_echo(&answer, &tokens, start, &server)
                    .with_context(|| format!("scoring option `{option}`"))?,
            );
        }
        Ok(Choice {
            logprobs,
            prompt_tokens: prompt.len(),
        })
    }

    fn tokenizer(&self, probe: &Prompt) -> Result<Tokenizer> {
        if let Some(t) = self.tokenizer.get() {
            return Ok(*t);
        }
        let mut found = Tokenizer::Estimate;
        for how in [Tokenizer::ApplyTemplate, Tokenizer::ChatTokenize] {
            match self.count_with(how, probe) {
                Ok(_) => {
                    found = how;
                    break;
                }
                // A server that is down is an error, not a reason to estimate.
                Err(e) if !is_refusal(&e) && e.downcast_ref::<MissingField>().is_none() => {
                    return Err(e)
                }
                Err(_) => {}
            }
        }
        Ok(*self.tokenizer.get_or_init(|| found))
    }

    fn count_with(&self, how: Tokenizer, prompt: &Prompt) -> Result<usize> {
        match how {
            Tokenizer::Estimate => {
                self.estimated_counts.fetch_add(1, Ordering::Relaxed);
                Ok(wire::estimate_tokens(prompt))
            }
            _ => Ok(self.token_ids(how, prompt)?.len()),
        }
    }

    /// The token ids of the prompt as the server renders it (chat template, then the prefill),
    /// from its tokenizer endpoint.
    fn token_ids(&self, how: Tokenizer, prompt: &Prompt) -> Result<Vec<u64>> {
        let toks = match how {
            Tokenizer::ApplyTemplate => {
                let rendered = self.call(
                    "/apply-template",
                    &json!({"messages": wire::messages(&Prompt::new(prompt.messages.clone()))}),
                )?;
                let text = rendered["prompt"].as_str().ok_or(MissingField("prompt"))?;
                self.call(
                    "/tokenize",
                    &json!({"content": format!("{text}{}", prompt.prefill), "add_special": false}),
                )?
            }
            Tokenizer::ChatTokenize => {
                let mut body = json!({"model": self.info.name, "messages": wire::messages(prompt)});
                if prompt.prefill.is_empty() {
                    body["add_generation_prompt"] = json!(true);
                } else {
                    body["continue_final_message"] = json!(true);
                    body["add_generation_prompt"] = json!(false);
                }
                self.call("/tokenize", &body)?
            }
            Tokenizer::Estimate => bail!("internal error: no tokenizer endpoint to ask"),
        };
        toks["tokens"]
            .as_array()
            .and_then(|t| t.iter().map(|v| v.as_u64()).collect::<Option<Vec<_>>>())
            .ok_or(MissingField("tokens").into())
    }
}

/// Context window from the model entry (vLLM `max_model_len`) or llama.cpp's `/props`;
/// 0 when the server does not say.
fn context_size(client: &Client, entry: &Value) -> usize {
    if let Some(n) = entry["max_model_len"].as_u64() {
        return n as usize;
    }
    client
        .call("/props", None)
        .ok()
        .and_then(|p| p["default_generation_settings"]["n_ctx"].as_u64())
        .or_else(|| entry["meta"]["n_ctx_train"].as_u64())
        .unwrap_or(0) as usize
}

impl Backend for OpenaiBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_tokens(&self, prompt: &Prompt) -> Result<usize> {
        let how = self.tokenizer(prompt)?;
        self.count_with(how, prompt)
            .with_context(|| format!("counting tokens on {}", self.client.server_name()))
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation>> {
        self.fan_out(requests, |r| self.generate_one(r))
    }

    fn choose(&self, requests: &[ChoiceRequest]) -> Vec<Result<Choice>> {
        self.fan_out(requests, |r| self.choose_one(r))
    }

    fn stats(&self) -> Option<Value> {
        let mut s = self.client.counters.to_json();
        s["servers"] = json!(self.client.server_name());
        s["estimated_token_counts"] = json!(self.estimated_counts.load(Ordering::Relaxed));
        s["echo_scored_choices"] = json!(self.echo_choices.load(Ordering::Relaxed));
        s["cache"] = match &self.cache {
            Some(c) => c.to_json(),
            None => json!(null),
        };
        Some(s)
    }
}

/// Is this error a server's refusal (4xx) of an endpoint or body it does not support?
fn is_refusal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<HttpStatus>()
        .is_some_and(|s| (400..500).contains(&s.status) && s.status != 429)
}

/// A tokenizer endpoint answered without the field we read.
#[derive(Debug)]
struct MissingField(&'static str);

impl std::fmt::Display for MissingField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "answer has no `{}`", self.0)
    }
}

impl std::error::Error for MissingField {}
