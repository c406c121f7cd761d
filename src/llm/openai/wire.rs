//! The OpenAI chat-completions wire format: our requests to JSON bodies, JSON answers back to
//! our types. Pure functions, so every quirk is unit-tested without a server.
//!
//! Prefill (`Prompt::prefill`) is sent as a final, partial assistant message. llama.cpp's
//! server and Ollama continue such a message; vLLM does with `continue_final_message` and
//! `add_generation_prompt: false`, which we always send alongside (other servers ignore
//! unknown fields). The returned text is the continuation only, as with the local backend.
//!
//! Sampling options beyond temperature and top-p are sent only when set away from neutral, so
//! a plain request stays a standard one (and keeps its cache key): `presence_penalty` and
//! `frequency_penalty` are standard; `top_k`, `min_p` and `repetition_penalty` are what vLLM,
//! SGLang and mistral.rs read, and `repeat_penalty` with `repeat_last_n` what llama.cpp's
//! server reads (each ignores the others' names). Servers apply them with their own semantics:
//! vLLM's repetition penalty, for one, also covers the prompt and has no window. The local
//! engine's default loop guard (the `Default` repetition penalty and window) is not sent: a
//! server keeps its own default, and a plain request stays one that hosted APIs accept
//! (api.openai.com refuses unknown fields); any other value is sent.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::chat::Prompt;
use crate::llm::backend::{Completion, ContextOverflow, FinishReason, GenerateRequest};
use crate::sampling::SamplingParams;

/// Number of first-token alternatives asked for when scoring options (the OpenAI maximum).
pub const TOP_LOGPROBS: usize = 20;

/// `messages` of a prompt, with the prefill as a final assistant message.
pub fn messages(prompt: &Prompt) -> Vec<Value> {
    let mut out: Vec<Value> = prompt
        .messages
        .iter()
        .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
        .collect();
    if !prompt.prefill.is_empty() {
        out.push(json!({"role": "assistant", "content": prompt.prefill}));
    }
    out
}

/// What tells a model that cannot continue an assistant message (api.openai.com) to go on from
/// the prefill.
pub const INSTRUCT_CUE: &str =
    "Reply with only the continuation of the following text, starting right where it stops:";

/// The prompt with its prefill folded into the last user message as an instruction (the
/// "instruct" prefill mode), for servers that answer a final assistant message with a new
/// reply instead of continuing it. Without a prefill the prompt is unchanged.
pub fn instruct_prefill(prompt: &Prompt) -> Prompt {
    if prompt.prefill.is_empty() {
        return prompt.clone();
    }
    let cue = format!("{INSTRUCT_CUE}\n\n{}", prompt.prefill);
    let mut messages = prompt.messages.clone();
    match messages.last_mut() {
        Some(last) if last.role == crate::chat::Role::User => {
            last.content = format!("{}\n\n{cue}", last.content);
        }
        _ => messages.push(crate::chat::ChatMessage::user(cue)),
    }
    Prompt::new(messages)
}

/// Fields that make a server continue the prefill instead of starting a new reply.
fn prefill_fields(body: &mut Value, prompt: &Prompt) {
    if !prompt.prefill.is_empty() {
        body["continue_final_message"] = json!(true);
        body["add_generation_prompt"] = json!(false);
    }
}

/// Chat-completions body for sample `index` of `req`.
///
/// One sample per HTTP request (seed `req.seed + index`): not every server honours `n`, and
/// one sample per request makes each cacheable and retryable on its own.
pub fn chat_body(model: &str, req: &GenerateRequest, index: usize) -> Value {
    let p = &req.params;
    let mut body = json!({
        "model": model,
        "messages": messages(&req.prompt),
        "n": 1,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "max_tokens": p.max_tokens,
        "seed": req.seed.wrapping_add(index as u64),
        "stream": false,
    });
    if !p.stop.is_empty() {
        body["stop"] = json!(p.stop);
    }
    sampling_fields(&mut body, p);
    prefill_fields(&mut body, &req.prompt);
    body
}

/// The sampling options that are set away from neutral (see the module docs).
fn sampling_fields(body: &mut Value, p: &SamplingParams) {
    if p.top_k > 0 {
        body["top_k"] = json!(p.top_k);
    }
    if p.min_p > 0.0 {
        body["min_p"] = json!(p.min_p);
    }
    let guard = SamplingParams::default();
    let is_local_guard =
        p.repetition_penalty == guard.repetition_penalty && p.repeat_last_n == guard.repeat_last_n;
    if p.repetition_penalty != 1.0 && p.repeat_last_n > 0 && !is_local_guard {
        body["repetition_penalty"] = json!(p.repetition_penalty);
        body["repeat_penalty"] = json!(p.repetition_penalty);
        body["repeat_last_n"] = json!(p.repeat_last_n);
    }
    if p.presence_penalty != 0.0 {
        body["presence_penalty"] = json!(p.presence_penalty);
    }
    if p.frequency_penalty != 0.0 {
        body["frequency_penalty"] = json!(p.frequency_penalty);
    }
}

/// Chat-completions body asking for the first token's top log-probabilities.
pub fn choice_body(model: &str, prompt: &Prompt) -> Value {
    let mut body = json!({
        "model": model,
        "messages": messages(prompt),
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 1,
        "seed": 0,
        "logprobs": true,
        "top_logprobs": TOP_LOGPROBS,
        "stream": false,
    });
    prefill_fields(&mut body, prompt);
    body
}

/// The completion and prompt size of a chat-completions answer.
pub fn parse_chat(answer: &Value) -> Result<(Completion, usize)> {
    let choice = answer["choices"]
        .get(0)
        .context("answer has no `choices[0]`")?;
    let text = choice["message"]["content"]
        .as_str()
        .context("answer has no `choices[0].message.content` string")?
        .to_string();
    let finish = match choice["finish_reason"].as_str() {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    };
    let usage = &answer["usage"];
    let tokens = usage["completion_tokens"].as_u64().unwrap_or(0) as usize;
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0) as usize;
    Ok((
        Completion {
            text,
            tokens,
            finish,
        },
        prompt_tokens,
    ))
}

/// Whether a chat answer holds the first token's `top_logprobs` that option scoring reads.
pub fn has_top_logprobs(answer: &Value) -> bool {
    answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"].is_array()
}

/// Log-probability of each option as the whole first token, from the answer's
/// `top_logprobs`. An option outside the top list is an error, never a guessed value.
pub fn parse_choice(answer: &Value, options: &[String], server: &str) -> Result<Vec<f64>> {
    let top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        .as_array()
        .ok_or_else(|| {
            anyhow!(
                "{server} returned no `choices[0].logprobs.content[0].top_logprobs`: it does not \
                 support `logprobs`/`top_logprobs` on chat completions, which option scoring needs"
            )
        })?;
    let mut out = Vec::with_capacity(options.len());
    for opt in options {
        let lp = top
            .iter()
            .find(|t| t["token"].as_str() == Some(opt.as_str()))
            .and_then(|t| t["logprob"].as_f64());
        match lp {
            Some(lp) => out.push(lp),
            None => {
                return Err(NotListed(format!(
                    "{server}: option `{opt}` is not among the {} first-token alternatives the \
                     server returned ({}): `--option-scoring first-token` scores only options \
                     that are one token the server lists",
                    top.len(),
                    top.iter()
                        .filter_map(|t| t["token"].as_str())
                        .map(|t| format!("{t:?}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ))
                .into())
            }
        }
    }
    Ok(out)
}

/// Why an option could not be scored from the first token's `top_logprobs`: it is not one of
/// the tokens the server listed (several tokens long, or too unlikely to be listed).
#[derive(Debug)]
pub struct NotListed(pub String);

impl std::fmt::Display for NotListed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotListed {}

/// `/v1/completions` body that scores the prompt `tokens` themselves: `echo` with `logprobs`,
/// answered in the OpenAI legacy shape (`choices[0].logprobs.token_logprobs`); vLLM turns it
/// into its `prompt_logprobs` (= `logprobs`) and also returns `choices[0].prompt_logprobs`.
/// `prompt_logprobs` is not sent: vLLM would take an explicit 0 over `logprobs`. One new
/// token, greedy. The prompt goes as token ids, so the server scores exactly the tokens the
/// option was counted in.
pub fn echo_body(model: &str, tokens: &[u64]) -> Value {
    json!({
        "model": model,
        "prompt": tokens,
        "max_tokens": 1,
        "temperature": 0.0,
        "seed": 0,
        "echo": true,
        "logprobs": 1,
        "stream": false,
    })
}

/// Whether a `/v1/completions` answer holds log-probabilities of the prompt in either shape.
pub fn has_prompt_logprobs(answer: &Value) -> bool {
    let c = &answer["choices"][0];
    c["prompt_logprobs"].is_array() || c["logprobs"]["token_logprobs"].is_array()
}

/// Length of the common prefix of two token sequences: where an option's tokens start in the
/// prompt that ends with it (earlier than the prompt's own end when the option's first
/// characters merge into the prompt's last token, e.g. "(" + "A" = "(A").
pub fn common_prefix(a: &[u64], b: &[u64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The sum of the log-probabilities of `tokens[start..]` from an `echo_body` answer: vLLM's
/// `prompt_logprobs` (one `{token id: {logprob, …}}` per prompt token, `null` first) when
/// present, else the legacy `logprobs.token_logprobs` (`null` first, then one per prompt token
/// and the generated one). An answer with fewer entries than the prompt has tokens (a server
/// that returns only the generated token's log-probability, as llama.cpp's server does) is an
/// error, never a partial sum.
pub fn parse_echo(answer: &Value, tokens: &[u64], start: usize, server: &str) -> Result<f64> {
    let choice = &answer["choices"][0];
    if start == 0 || start >= tokens.len() {
        bail!(
            "internal error: option tokens {start}..{} of a {}-token prompt",
            tokens.len(),
            tokens.len()
        );
    }
    if let Some(per_token) = choice["prompt_logprobs"].as_array() {
        if per_token.len() < tokens.len() {
            bail!(
                "{server} returned `prompt_logprobs` for {} tokens of a {}-token prompt",
                per_token.len(),
                tokens.len()
            );
        }
        return (start..tokens.len())
            .map(|i| {
                per_token[i][tokens[i].to_string()]["logprob"]
                    .as_f64()
                    .with_context(|| {
                        format!(
                            "{server}: `prompt_logprobs[{i}]` has no log-probability of the \
                             prompt's token {}",
                            tokens[i]
                        )
                    })
            })
            .sum();
    }
    let Some(lps) = choice["logprobs"]["token_logprobs"].as_array() else {
        bail!(
            "{server}/v1/completions returned neither `prompt_logprobs` nor \
             `logprobs.token_logprobs`: it does not support `echo` with `logprobs`, which exact \
             scoring of several-token options needs (vLLM does)"
        );
    };
    if lps.len() < tokens.len() {
        bail!(
            "{server}/v1/completions returned {} log-probabilities for a {}-token prompt with \
             `echo`: it scores only the tokens it generates, not the prompt's, so options of \
             several tokens cannot be scored exactly on it (vLLM can; so can the local backend)",
            lps.len(),
            tokens.len()
        );
    }
    (start..tokens.len())
        .map(|i| {
            lps[i]
                .as_f64()
                .with_context(|| format!("{server}: `token_logprobs[{i}]` is not a number"))
        })
        .sum()
}

/// A server's refusal of a prompt longer than its context, as a [`ContextOverflow`] with the
/// sizes the server named (0 where it named none); `None` for any other answer.
///
/// The shapes recognised (HTTP 400, 413 or 422):
/// - OpenAI and vLLM: "This model's maximum context length is 4096 tokens. However, you
///   requested 5000 tokens (4900 in the messages, 100 in the completion)…", OpenAI with
///   `"code": "context_length_exceeded"`;
/// - llama.cpp server: `"type": "exceed_context_size_error"` with `n_prompt_tokens` and `n_ctx`;
/// - TGI: "`inputs` tokens + `max_new_tokens` must be <= 4096";
/// - Ollama and others: a message naming the context length or window.
pub fn context_overflow(status: u16, body: &str, context: usize) -> Option<ContextOverflow> {
    if !matches!(status, 400 | 413 | 422) {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    const SIGNS: [&str; 7] = [
        "context length",
        "context_length",
        "context size",
        "exceed_context_size",
        "context window",
        "`inputs` tokens + `max_new_tokens`",
        "maximum context",
    ];
    if !SIGNS.iter().any(|s| lower.contains(s)) {
        return None;
    }
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let field = |name: &str| json["error"][name].as_u64().map(|n| n as usize);
    let after = |cue: &str| -> Option<usize> {
        let i = lower.find(cue)? + cue.len();
        let digits: String = lower[i..]
            .chars()
            .skip_while(|c| c.is_whitespace())
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    let context = field("n_ctx")
        .or_else(|| after("maximum context length is"))
        .or_else(|| after("must be <="))
        .unwrap_or(context);
    let prompt_tokens = field("n_prompt_tokens")
        .or_else(|| after("("))
        .filter(|_| lower.contains("in the messages") || field("n_prompt_tokens").is_some())
        .unwrap_or(0);
    let needed = after("you requested")
        .or((prompt_tokens > 0).then_some(prompt_tokens))
        .unwrap_or(0);
    Some(ContextOverflow {
        prompt_tokens,
        needed,
        context,
    })
}

/// Rough token count when the server offers no tokenizer: about 4 characters per token plus
/// 4 tokens of chat-template overhead per message (typical of English text with BPE
/// vocabularies; off by tens of percent on other text).
pub fn estimate_tokens(prompt: &Prompt) -> usize {
    let chars: usize = prompt
        .messages
        .iter()
        .map(|m| m.content.chars().count())
        .sum::<usize>()
        + prompt.prefill.chars().count();
    chars.div_ceil(4) + 4 * prompt.messages.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatMessage;

    fn prompt(prefill: &str) -> Prompt {
        Prompt {
            messages: vec![ChatMessage::user("Hi")],
            prefill: prefill.into(),
        }
    }

    #[test]
    fn chat_body_carries_sampling_seed_stop_and_prefill() {
        let req = GenerateRequest {
            prompt: prompt("Sure,"),
            params: SamplingParams {
                temperature: 0.5,
                top_p: 0.9,
                max_tokens: 7,
                stop: vec!["\n".into()],
                ..neutral()
            },
            n: 2,
            seed: 10,
        };
        let b = chat_body("m", &req, 1);
        assert_eq!(b["seed"], 11);
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["stop"], json!(["\n"]));
        assert_eq!(
            b["messages"][1],
            json!({"role": "assistant", "content": "Sure,"})
        );
        assert_eq!(b["continue_final_message"], true);
        let plain = chat_body(
            "m",
            &GenerateRequest {
                prompt: prompt(""),
                ..req
            },
            0,
        );
        assert_eq!(plain["messages"].as_array().unwrap().len(), 1);
        assert!(plain.get("continue_final_message").is_none());
        assert!(plain.get("stop").is_some());
    }

    /// Every option beyond temperature and top-p at its neutral value.
    fn neutral() -> SamplingParams {
        SamplingParams {
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn neutral_options_stay_out_of_the_body() {
        let req = |params| GenerateRequest {
            prompt: prompt(""),
            params,
            n: 1,
            seed: 0,
        };
        let b = chat_body("m", &req(neutral()), 0);
        let mut keys: Vec<&str> = b.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "max_tokens",
                "messages",
                "model",
                "n",
                "seed",
                "stream",
                "temperature",
                "top_p"
            ]
        );
        let b = chat_body(
            "m",
            &req(SamplingParams {
                top_k: 40,
                min_p: 0.05,
                repetition_penalty: 1.1,
                repeat_last_n: 32,
                presence_penalty: 0.5,
                frequency_penalty: -0.25,
                ..neutral()
            }),
            0,
        );
        assert_eq!(
            (
                &b["top_k"],
                &b["min_p"],
                &b["presence_penalty"],
                &b["frequency_penalty"]
            ),
            (&json!(40), &json!(0.05), &json!(0.5), &json!(-0.25))
        );
        assert_eq!(
            (
                &b["repetition_penalty"],
                &b["repeat_penalty"],
                &b["repeat_last_n"]
            ),
            (&json!(1.1), &json!(1.1), &json!(32))
        );
    }

    #[test]
    fn default_sampling_sends_only_standard_fields() {
        let req = GenerateRequest {
            prompt: prompt(""),
            params: SamplingParams::default(),
            n: 1,
            seed: 0,
        };
        let b = chat_body("m", &req, 0);
        for field in ["repetition_penalty", "repeat_penalty", "top_k", "min_p"] {
            assert!(b.get(field).is_none(), "{field} sent by default: {b}");
        }
    }

    #[test]
    fn parses_chat_answers() {
        let a = json!({"choices": [{"message": {"content": "Yo"}, "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 2}});
        let (c, p) = parse_chat(&a).unwrap();
        assert_eq!(
            (c.text.as_str(), c.tokens, c.finish, p),
            ("Yo", 2, FinishReason::Length, 5)
        );
        assert!(parse_chat(&json!({"choices": []})).is_err());
    }

    #[test]
    fn options_come_from_top_logprobs_or_fail_clearly() {
        let a = json!({"choices": [{"logprobs": {"content": [{"token": "A", "logprob": -0.1,
            "top_logprobs": [{"token": "A", "logprob": -0.1}, {"token": "B", "logprob": -2.5}]}]}}]});
        let opts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_choice(&a, &opts(&["B", "A"]), "S").unwrap(),
            vec![-2.5, -0.1]
        );
        let e = parse_choice(&a, &opts(&["A", "C"]), "http://s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://s") && e.contains("`C`"), "{e}");
        let e = parse_choice(&json!({"choices": [{}]}), &opts(&["A"]), "http://s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not support"), "{e}");
    }

    #[test]
    fn echo_answers_sum_the_option_tokens_in_both_shapes() {
        // Prompt tokens [5, 6, 7, 8]; the option is tokens 2..4 (7, 8).
        let tokens = [5, 6, 7, 8];
        assert_eq!(common_prefix(&[5, 6, 9], &tokens), 2);
        // Legacy: null first, one per prompt token, then the generated token (ignored).
        let legacy = json!({"choices": [{"logprobs": {"token_logprobs":
            [null, -0.5, -0.25, -1.0, -9.0]}}]});
        assert!(has_prompt_logprobs(&legacy));
        assert_eq!(parse_echo(&legacy, &tokens, 2, "S").unwrap(), -1.25);
        // vLLM: read by token id, whatever other candidates an entry lists.
        let vllm = json!({"choices": [{"logprobs": null, "prompt_logprobs": [null,
            {"6": {"logprob": -0.5, "rank": 1}},
            {"3": {"logprob": -0.1, "rank": 1}, "7": {"logprob": -0.75, "rank": 2}},
            {"8": {"logprob": -2.0, "rank": 4}}]}]});
        assert!(has_prompt_logprobs(&vllm));
        assert_eq!(parse_echo(&vllm, &tokens, 2, "S").unwrap(), -2.75);
        // Only the generated token's log-probability (llama.cpp ignores echo): an error.
        let short = json!({"choices": [{"logprobs": {"token_logprobs": [-0.5]}}]});
        let e = parse_echo(&short, &tokens, 2, "http://s")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http://s") && e.contains("1 log-probabilities"),
            "{e}"
        );
        let e = parse_echo(&json!({"choices": [{}]}), &tokens, 2, "S").unwrap_err();
        assert!(e.to_string().contains("does not support `echo`"), "{e}");
        // A prompt_logprobs entry without the prompt's own token is an error, not a skip.
        let other = json!({"choices": [{"prompt_logprobs": [null, {"6": {"logprob": -1.0}},
            {"3": {"logprob": -0.1}}, {"8": {"logprob": -2.0}}]}]});
        assert!(parse_echo(&other, &tokens, 2, "S").is_err());
    }

    #[test]
    fn instruct_mode_folds_the_prefill_into_the_user_turn() {
        let p = instruct_prefill(&prompt("The answer is ("));
        assert!(p.prefill.is_empty());
        assert_eq!(p.messages.len(), 1);
        assert_eq!(
            p.messages[0].content,
            format!("Hi\n\n{INSTRUCT_CUE}\n\nThe answer is (")
        );
        // No assistant message, so no continuation fields either.
        let b = choice_body("m", &p);
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
        assert!(b.get("continue_final_message").is_none());
        assert_eq!(instruct_prefill(&prompt("")), prompt(""));
    }

    #[test]
    fn context_length_refusals_become_overflows() {
        // vLLM's wording (OpenAI's is the same with a `code`).
        let vllm = r#"{"object":"error","message":"This model's maximum context length is 2048 tokens. However, you requested 2100 tokens (2000 in the messages, 100 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","code":400}"#;
        assert_eq!(
            context_overflow(400, vllm, 0),
            Some(ContextOverflow {
                prompt_tokens: 2000,
                needed: 2100,
                context: 2048
            })
        );
        let llama = r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#;
        assert_eq!(
            context_overflow(400, llama, 0),
            Some(ContextOverflow {
                prompt_tokens: 5000,
                needed: 5000,
                context: 4096
            })
        );
        let tgi = r#"{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`","error_type":"validation"}"#;
        assert_eq!(context_overflow(422, tgi, 0).unwrap().context, 4096);
        // The model's known context when the server names none.
        let plain = r#"{"error":{"message":"prompt exceeds the context window"}}"#;
        assert_eq!(context_overflow(400, plain, 8192).unwrap().context, 8192);
        // Other refusals, and other statuses, are not overflows.
        assert_eq!(context_overflow(400, r#"{"error":"bad model"}"#, 0), None);
        assert_eq!(context_overflow(500, vllm, 0), None);
    }

    #[test]
    fn estimate_is_chars_over_four_plus_overhead() {
        // "Hi" + "Sure," = 7 chars -> 2 tokens, + 4 for one message.
        assert_eq!(estimate_tokens(&prompt("Sure,")), 6);
    }
}
