//! Exact option scoring through `/v1/completions` with `echo` (`--option-scoring`), against a
//! fake vLLM / llama.cpp server on loopback: options of several tokens (score mode's " 7/10")
//! get the sum of their tokens' log-probabilities in both answer shapes (the legacy
//! `logprobs.token_logprobs` and vLLM's `prompt_logprobs`); one-token options the chat answer
//! lists stay on the cheap first-token path; servers that cannot echo give a clear error.

#[path = "util/fake_server.rs"]
mod fake_server;
mod util;

use cai::chat::ChatMessage;
use cai::llm::openai::{OpenaiBackend, OpenaiConfig, OptionScoring, RetryPolicy};
use cai::llm::{Backend, ChoiceRequest, ContextOverflow, Prompt};
use fake_server::{EchoShape, FakeServer, Fault, Flavor};
use serde_json::{json, Value};
use util::{cai, ok, root};

fn backend(server: &FakeServer, scoring: OptionScoring) -> OpenaiBackend {
    let cfg = OpenaiConfig {
        base_urls: vec![server.url.clone()],
        concurrency: 2,
        timeout_s: 5.0,
        retry: RetryPolicy {
            retries: 1,
            backoff_s: 0.01,
            max_backoff_s: 0.1,
        },
        option_scoring: scoring,
        no_cache: true,
        ..Default::default()
    };
    OpenaiBackend::open(&cfg, "default").unwrap()
}

fn prompt(prefill: &str) -> Prompt {
    Prompt {
        messages: vec![ChatMessage::user("Rate the response.")],
        prefill: prefill.into(),
    }
}

fn score_options() -> Vec<String> {
    cai::stages::label::score_options()
}

/// The fake vLLM's tokens of `prompt` (chat template + prefill), as `/tokenize` gives them.
fn vllm_tokens(p: &Prompt) -> Vec<u64> {
    let mut messages: Vec<Value> = p
        .messages
        .iter()
        .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
        .collect();
    let req = if p.prefill.is_empty() {
        json!({"messages": messages, "add_generation_prompt": true})
    } else {
        messages.push(json!({"role": "assistant", "content": p.prefill}));
        json!({"messages": messages, "continue_final_message": true})
    };
    fake_server::tokenize(&fake_server::render_chat(&req))
}

/// What exact scoring must give: the fake model's log-probabilities of the tokens the option
/// adds to the prompt, summed; and how many tokens that is.
fn expected(p: &Prompt, option: &str) -> (f64, usize) {
    let before = vllm_tokens(p);
    let full = vllm_tokens(&Prompt {
        prefill: format!("{}{option}", p.prefill),
        ..p.clone()
    });
    let start = before.iter().zip(&full).take_while(|(a, b)| a == b).count();
    let sum = (start..full.len())
        .map(|i| fake_server::token_logprob(&full, i))
        .sum();
    (sum, full.len() - start)
}

#[test]
fn several_token_options_are_scored_exactly_in_both_echo_shapes() {
    let req = ChoiceRequest {
        prompt: prompt("Score:"),
        options: score_options(),
    };
    let want: Vec<(f64, usize)> = req
        .options
        .iter()
        .map(|o| expected(&req.prompt, o))
        .collect();
    // " 7/10" after "Score:" is two tokens of the fake tokenizer (" 7", "/10").
    assert!(want.iter().all(|&(_, n)| n == 2), "{want:?}");
    for shape in [EchoShape::Legacy, EchoShape::PromptLogprobs] {
        for scoring in [OptionScoring::Auto, OptionScoring::Echo] {
            let server = FakeServer::start_flavor(&[], Flavor::Vllm);
            *server.state.echo_shape.lock().unwrap() = shape;
            let b = backend(&server, scoring);
            let c = b.choose(std::slice::from_ref(&req)).remove(0).unwrap();
            let got: Vec<f64> = c.logprobs.clone();
            assert_eq!(
                got,
                want.iter().map(|w| w.0).collect::<Vec<_>>(),
                "{shape:?} {scoring:?}"
            );
            assert_eq!(c.prompt_tokens, vllm_tokens(&req.prompt).len());
            // One completions request per option; auto asked the chat answer first.
            let s = &server.state;
            assert_eq!(
                s.completion_requests
                    .load(std::sync::atomic::Ordering::SeqCst),
                10
            );
            let chats = usize::from(scoring == OptionScoring::Auto);
            assert_eq!(server.chat_requests(), chats, "{shape:?} {scoring:?}");
            assert_eq!(b.stats().unwrap()["echo_scored_choices"], 1);
        }
    }
}

#[test]
fn an_option_merging_into_the_prefill_counts_the_merged_token() {
    // "(" + "A" is one token "(A" of the fake tokenizer: the option's tokens start one before
    // the prompt's end, and the score is that token's log-probability.
    let server = FakeServer::start_flavor(&[], Flavor::Vllm);
    let b = backend(&server, OptionScoring::Echo);
    let req = ChoiceRequest {
        prompt: prompt("The answer is ("),
        options: vec!["A".into(), "B".into()],
    };
    let c = b.choose(std::slice::from_ref(&req)).remove(0).unwrap();
    for (got, o) in c.logprobs.iter().zip(&req.options) {
        let (want, n) = expected(&req.prompt, o);
        assert_eq!((*got, n), (want, 1), "{o}");
    }
}

#[test]
fn options_are_scored_from_the_shortest_shared_prefix() {
    // "(" + "A" merges into one token " (A" of the fake tokenizer; "(" + " B" does not
    // (" (", " B"). Both options are scored from where the prompt's " (" starts: A as its
    // one merged token, B as " (" then " B", so both include the "(" term.
    let server = FakeServer::start_flavor(&[], Flavor::Vllm);
    let b = backend(&server, OptionScoring::Echo);
    let req = ChoiceRequest {
        prompt: prompt("The answer is ("),
        options: vec!["A".into(), " B".into()],
    };
    let n = vllm_tokens(&req.prompt).len();
    let with = |o: &str| {
        vllm_tokens(&Prompt {
            prefill: format!("The answer is ({o}"),
            ..req.prompt.clone()
        })
    };
    let (a, bb) = (with("A"), with(" B"));
    assert_eq!((a.len(), bb.len()), (n, n + 1), "A merges, B does not");
    let want = [
        fake_server::token_logprob(&a, n - 1),
        fake_server::token_logprob(&bb, n - 1) + fake_server::token_logprob(&bb, n),
    ];
    let c = b.choose(std::slice::from_ref(&req)).remove(0).unwrap();
    assert_eq!(c.logprobs, want);
}

#[test]
fn listed_one_token_options_stay_on_the_chat_answer() {
    let server = FakeServer::start_flavor(&[], Flavor::Vllm);
    let b = backend(&server, OptionScoring::Auto);
    let req = ChoiceRequest {
        prompt: prompt("The answer is ("),
        options: vec!["A".into(), "B".into()],
    };
    assert_eq!(b.choose(&[req]).remove(0).unwrap().logprobs.len(), 2);
    assert_eq!(server.chat_requests(), 1);
    let s = &server.state;
    assert_eq!(
        s.completion_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn servers_that_cannot_echo_give_clear_errors() {
    let req = ChoiceRequest {
        prompt: prompt("Score:"),
        options: score_options(),
    };
    let err = |b: &OpenaiBackend| {
        format!(
            "{:#}",
            b.choose(std::slice::from_ref(&req)).remove(0).unwrap_err()
        )
    };
    // First-token only: the option is not a listed token.
    let server = FakeServer::start_flavor(&[], Flavor::Vllm);
    let e = err(&backend(&server, OptionScoring::FirstToken));
    assert!(
        e.contains("` 1/10` is not among") && e.contains("--option-scoring"),
        "{e}"
    );
    // llama.cpp's server ignores `echo` and scores only the generated token.
    let server = FakeServer::start_flavor(&[], Flavor::LlamaCpp);
    *server.state.echo_shape.lock().unwrap() = EchoShape::GeneratedOnly;
    let e = err(&backend(&server, OptionScoring::Auto));
    assert!(
        e.contains("is not among") && e.contains("scores only the tokens it generates"),
        "{e}"
    );
    // A llama.cpp server that does echo (the legacy shape) is scored through its tokenizer.
    *server.state.echo_shape.lock().unwrap() = EchoShape::Legacy;
    let c = backend(&server, OptionScoring::Echo)
        .choose(std::slice::from_ref(&req))
        .remove(0)
        .unwrap();
    assert!(c.logprobs.iter().all(|l| *l < 0.0), "{c:?}");
    // Ollama has no tokenizer endpoint to find the options' tokens with.
    let server = FakeServer::start_flavor(&[], Flavor::Ollama);
    let e = err(&backend(&server, OptionScoring::Echo));
    assert!(e.contains("no tokenizer endpoint"), "{e}");
}

#[test]
fn score_mode_labels_through_the_cli_with_exact_option_scores() {
    let server = FakeServer::start_flavor(&[], Flavor::Vllm);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = cai(dir.path());
    util::without_proxies(&mut cmd);
    cmd.args(["label", "--backend", "openai", "--base-url", &server.url])
        .args(["--mode", "score", "--limit", "2", "--few-shot", "0"])
        .args(["--no-cache", "--quiet", "--out", "score.jsonl"])
        .arg("--pairs")
        .arg(root().join("data/sample-pairs.jsonl"))
        .arg("--constitution")
        .arg(root().join("constitutions/harmless.yaml"));
    ok(&mut cmd);
    let labels = std::fs::read_to_string(dir.path().join("score.jsonl")).unwrap();
    assert_eq!(labels.lines().count(), 2);
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("score.jsonl.manifest.json")).unwrap(),
    )
    .unwrap();
    let echoed = m["stats"]["backend"]["echo_scored_choices"]
        .as_u64()
        .unwrap();
    assert!(echoed >= 4, "2 pairs x 2 responses x principles: {m}");
    assert_eq!(
        server
            .state
            .completion_requests
            .load(std::sync::atomic::Ordering::SeqCst) as u64,
        echoed * 10
    );
}

#[test]
fn a_context_length_refusal_of_the_echo_request_stays_an_overflow() {
    let req = ChoiceRequest {
        prompt: prompt("Score:"),
        options: score_options(),
    };
    // Echo: the completions request is refused. Auto: the chat answer passes, then the same.
    for (scoring, faults) in [
        (OptionScoring::Echo, vec![Fault::ContextLength]),
        (
            OptionScoring::Auto,
            vec![Fault::Slow(std::time::Duration::ZERO), Fault::ContextLength],
        ),
    ] {
        let server = FakeServer::start_flavor(&faults, Flavor::Vllm);
        let e = backend(&server, scoring)
            .choose(std::slice::from_ref(&req))
            .remove(0)
            .unwrap_err();
        assert!(
            e.downcast_ref::<ContextOverflow>().is_some(),
            "{scoring:?}: {e:#}"
        );
    }
}
