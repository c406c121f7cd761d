//! `--backend openai` against a fake OpenAI-compatible server on 127.0.0.1: retries on 429 /
//! 500 / dropped connections / timeouts, clear errors for a dead server, malformed JSON and
//! missing logprobs, the request cache, and `cai revise` end to end.

#[path = "util/fake_server.rs"]
mod fake_server;
mod util;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use cai::chat::ChatMessage;
use cai::llm::openai::{OpenaiBackend, OpenaiConfig, RetryPolicy};
use cai::llm::{Backend, ChoiceRequest, GenerateRequest, Prompt, SamplingParams};
use fake_server::{FakeServer, Fault, CANNED};
use serde_json::Value;
use util::{cai, ok, root};

fn config(url: &str, cache: Option<&std::path::Path>) -> OpenaiConfig {
    OpenaiConfig {
        base_urls: vec![url.to_string()],
        concurrency: 4,
        timeout_s: 0.3,
        retry: RetryPolicy {
            retries: 4,
            backoff_s: 0.01,
            max_backoff_s: 2.0,
        },
        cache_dir: cache.map(|p| p.to_path_buf()),
        no_cache: cache.is_none(),
        ..Default::default()
    }
}

fn request(i: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::new(vec![ChatMessage::user(format!("question {i}"))]),
        params: SamplingParams::default(),
        n: 1,
        seed: i,
    }
}

fn stat(b: &OpenaiBackend, key: &str) -> u64 {
    b.stats().unwrap()[key].as_u64().unwrap()
}

#[test]
fn retries_429_500_drops_and_timeouts_then_succeeds() {
    let server = FakeServer::start(&[
        Fault::TooMany { retry_after_s: 1 },
        Fault::Status(500),
        Fault::Drop,
        Fault::Slow(Duration::from_millis(800)),
    ]);
    let b = OpenaiBackend::open(&config(&server.url, None), "default").unwrap();
    assert_eq!(b.info().name, "fake-model");
    assert_eq!(b.info().context, 2048);
    let start = Instant::now();
    let out = b.generate(&[request(0)]);
    let g = out[0].as_ref().unwrap();
    assert!(g.completions[0].text.starts_with(CANNED));
    // Retry-After: 1 was honoured although our own backoff is 10 ms.
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(stat(&b, "retries"), 4);
    assert_eq!(stat(&b, "http_429"), 1);
    assert_eq!(stat(&b, "http_5xx"), 1);
    assert_eq!(stat(&b, "timeouts"), 1);
    assert_eq!(stat(&b, "connection_errors"), 1);
    assert_eq!(stat(&b, "failures"), 0);
    assert_eq!(server.chat_requests(), 5);
}

#[test]
fn a_server_that_stays_down_gives_a_clear_error() {
    let server = FakeServer::start(&[]);
    let b = OpenaiBackend::open(&config(&server.url, None), "fake-model").unwrap();
    server
        .state
        .faults
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n(Fault::Status(503), 10));
    let err = format!("{:#}", b.generate(&[request(0)])[0].as_ref().unwrap_err());
    assert!(err.contains("giving up after 5 attempts"), "{err}");
    assert!(
        err.contains(&server.url) && err.contains("HTTP 503"),
        "{err}"
    );
    assert_eq!(stat(&b, "failures"), 1);

    // Nobody listening at all: the error names the address.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let err = format!(
        "{:#}",
        OpenaiBackend::open(&config(&url, None), "m").err().unwrap()
    );
    assert!(
        err.contains(&url) && err.contains("connection error"),
        "{err}"
    );
}

#[test]
fn malformed_json_and_missing_logprobs_are_retried_then_clear_errors() {
    let server = FakeServer::start(&[Fault::Malformed]);
    let b = OpenaiBackend::open(&config(&server.url, None), "fake-model").unwrap();
    // A body that is not JSON once: retried, counted.
    assert!(b.generate(&[request(0)])[0].is_ok());
    assert_eq!(stat(&b, "invalid_json"), 1);
    assert_eq!(stat(&b, "retries"), 1);
    let choice = ChoiceRequest {
        prompt: Prompt::new(vec![ChatMessage::user("A or B?")]),
        options: vec!["A".into(), "B".into()],
    };
    // Logprobs dropped once: retried, counted, and the answer is the server's.
    server.push_faults([Fault::NoLogprobs]);
    assert!(b.choose(std::slice::from_ref(&choice))[0].is_ok());
    assert_eq!(stat(&b, "incomplete_answers"), 1);
    // Never any logprobs: a clear error once the retries (4) are spent.
    server.push_faults(std::iter::repeat_n(Fault::NoLogprobs, 5));
    let err = format!(
        "{:#}",
        b.choose(std::slice::from_ref(&choice))[0]
            .as_ref()
            .unwrap_err()
    );
    assert!(
        err.contains(&server.url) && err.contains("top_logprobs"),
        "{err}"
    );
    // With logprobs: exact values from the server, in option order.
    let c = b.choose(std::slice::from_ref(&choice))[0]
        .as_ref()
        .unwrap()
        .clone();
    let want = fake_server::chat_answer(
        &serde_json::json!({"messages": [{"role": "user", "content": "A or B?"}], "logprobs": true}),
        true,
    );
    let top = &want["choices"][0]["logprobs"]["content"][0]["top_logprobs"];
    assert_eq!(
        c.logprobs,
        vec![
            top[0]["logprob"].as_f64().unwrap(),
            top[1]["logprob"].as_f64().unwrap()
        ]
    );
    // Never JSON: a clear error once the retries are spent.
    server.push_faults(std::iter::repeat_n(Fault::Malformed, 10));
    let err = format!("{:#}", b.generate(&[request(1)])[0].as_ref().unwrap_err());
    assert!(
        err.contains("malformed JSON") && err.contains("giving up after 5 attempts"),
        "{err}"
    );
}

#[test]
fn the_cache_answers_a_repeated_run_without_the_server() {
    let server = FakeServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let reqs: Vec<_> = (0..6).map(request).collect();
    let first = OpenaiBackend::open(&config(&server.url, Some(dir.path())), "fake-model").unwrap();
    assert!(first.generate(&reqs).iter().all(|r| r.is_ok()));
    assert_eq!(server.chat_requests(), 6);
    let second = OpenaiBackend::open(&config(&server.url, Some(dir.path())), "fake-model").unwrap();
    let again = second.generate(&reqs);
    assert_eq!(
        server.chat_requests(),
        6,
        "a repeated run asks the server nothing"
    );
    assert_eq!(
        again[3].as_ref().unwrap().completions[0].text,
        first.generate(&reqs[3..4])[0].as_ref().unwrap().completions[0].text
    );
    let cache = &second.stats().unwrap()["cache"];
    assert_eq!(
        (cache["hits"].as_u64(), cache["misses"].as_u64()),
        (Some(6), Some(0))
    );
}

#[test]
fn revise_through_the_openai_backend_writes_the_servers_answers() {
    let server = FakeServer::start(&[Fault::Status(500)]);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = cai(dir.path());
    cmd.env("CAI_TEST_KEY", "sk-secret-123")
        .args(["revise", "--backend", "openai", "--base-url", &server.url])
        .args([
            "--api-key-env",
            "CAI_TEST_KEY",
            "--backoff",
            "0.01",
            "--timeout",
            "5",
        ])
        .args([
            "--rounds",
            "1",
            "--limit",
            "3",
            "--out",
            "rev.jsonl",
            "--quiet",
        ])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--constitution")
        .arg(root().join("constitutions/harmless.yaml"))
        .arg("--prompts")
        .arg(root().join("data/sample-prompts.jsonl"));
    ok(&mut cmd);
    let text = std::fs::read_to_string(dir.path().join("rev.jsonl")).unwrap();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 3);
    for r in &recs {
        for text in [&r["initial"], &r["rounds"][0]["critique"], &r["final"]] {
            assert!(text.as_str().unwrap().starts_with(CANNED), "{r}");
        }
    }
    // 3 prompts x (answer, critique, revision) + one retried 500.
    assert_eq!(server.chat_requests(), 10);
    let manifest = std::fs::read_to_string(dir.path().join("rev.jsonl.manifest.json")).unwrap();
    assert!(
        !manifest.contains("sk-secret-123"),
        "the API key never reaches a manifest"
    );
    let m: Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(m["model"]["name"], "fake-model");
    assert_eq!(m["stats"]["backend"]["retries"], 1);
    assert!(server
        .state
        .auth
        .lock()
        .unwrap()
        .iter()
        .all(|a| a == "Bearer sk-secret-123"));
}
