//! `--backend openai` against a fake OpenAI-compatible server on 127.0.0.1: retries on 429 /
//! 500 / dropped connections / timeouts, clear errors for a dead server, malformed JSON and
//! missing logprobs, the request cache, and `cai revise` end to end.

mod util;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cai::chat::ChatMessage;
use cai::llm::openai::{OpenaiBackend, OpenaiConfig, RetryPolicy};
use cai::llm::{Backend, ChoiceRequest, GenerateRequest, Prompt, SamplingParams};
use serde_json::{json, Value};
use util::{cai, ok, root};

/// What the fake server does with the next chat request.
#[derive(Debug, Clone)]
enum Fault {
    Slow(Duration),
    TooMany { retry_after_s: u32 },
    ServerError,
    Drop,
    Malformed,
    NoLogprobs,
}

/// The canned answer of every chat completion.
const CANNED: &str = "I can't help with that, but here is a safer idea.";

#[derive(Default)]
struct State {
    faults: Mutex<VecDeque<Fault>>,
    chat_requests: AtomicUsize,
    auth: Mutex<Vec<String>>,
}

struct FakeServer {
    url: String,
    state: Arc<State>,
}

impl FakeServer {
    fn start(faults: &[Fault]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        state.faults.lock().unwrap().extend(faults.iter().cloned());
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Self { url, state }
    }

    fn chat_requests(&self) -> usize {
        self.state.chat_requests.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream, st: &State) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "authorization" => st.auth.lock().unwrap().push(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    let mut w = conn;
    let send = |w: &mut TcpStream, status: &str, extra: &str, body: &str| {
        let _ = write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/v1/models") => send(
            &mut w,
            "200 OK",
            "",
            r#"{"data":[{"id":"fake-model","max_model_len":2048}]}"#,
        ),
        ("POST", "/v1/chat/completions") => {
            st.chat_requests.fetch_add(1, Ordering::SeqCst);
            let req: Value = serde_json::from_slice(&body).unwrap();
            let fault = st.faults.lock().unwrap().pop_front();
            match fault {
                Some(Fault::Slow(d)) => {
                    std::thread::sleep(d);
                    send(&mut w, "200 OK", "", &chat_answer(&req, true).to_string());
                }
                Some(Fault::TooMany { retry_after_s }) => send(
                    &mut w,
                    "429 Too Many Requests",
                    &format!("Retry-After: {retry_after_s}\r\n"),
                    r#"{"error":"slow down"}"#,
                ),
                Some(Fault::ServerError) => send(
                    &mut w,
                    "500 Internal Server Error",
                    "",
                    r#"{"error":"boom"}"#,
                ),
                Some(Fault::Drop) => {}
                Some(Fault::Malformed) => send(&mut w, "200 OK", "", r#"{"choices": [{"mess"#),
                Some(Fault::NoLogprobs) => {
                    send(&mut w, "200 OK", "", &chat_answer(&req, false).to_string())
                }
                None => send(&mut w, "200 OK", "", &chat_answer(&req, true).to_string()),
            }
        }
        // vLLM-style chat tokenizer: a fixed count, so the revise test needs no estimate.
        ("POST", "/tokenize") => send(&mut w, "200 OK", "", r#"{"count": 12, "tokens": []}"#),
        _ => send(&mut w, "404 Not Found", "", r#"{"error":"not found"}"#),
    }
}

fn chat_answer(req: &Value, with_logprobs: bool) -> Value {
    let mut a = json!({
        "choices": [{"message": {"role": "assistant", "content": CANNED}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 11},
    });
    if req["logprobs"] == json!(true) && with_logprobs {
        a["choices"][0]["logprobs"] = json!({"content": [{"token": "A", "logprob": -0.25,
            "top_logprobs": [{"token": "A", "logprob": -0.25}, {"token": "B", "logprob": -1.5}]}]});
    }
    a
}

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
        Fault::ServerError,
        Fault::Drop,
        Fault::Slow(Duration::from_millis(800)),
    ]);
    let b = OpenaiBackend::open(&config(&server.url, None), "default").unwrap();
    assert_eq!(b.info().name, "fake-model");
    assert_eq!(b.info().context, 2048);
    let start = Instant::now();
    let out = b.generate(&[request(0)]);
    let g = out[0].as_ref().unwrap();
    assert_eq!(g.completions[0].text, CANNED);
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
        .extend(std::iter::repeat_n(Fault::ServerError, 10));
    let err = format!("{:#}", b.generate(&[request(0)])[0].as_ref().unwrap_err());
    assert!(err.contains("giving up after 5 attempts"), "{err}");
    assert!(
        err.contains(&server.url) && err.contains("HTTP 500"),
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
fn malformed_json_and_missing_logprobs_are_clear_errors() {
    let server = FakeServer::start(&[Fault::Malformed, Fault::NoLogprobs]);
    let b = OpenaiBackend::open(&config(&server.url, None), "fake-model").unwrap();
    let err = format!("{:#}", b.generate(&[request(0)])[0].as_ref().unwrap_err());
    assert!(err.contains("malformed JSON"), "{err}");
    let choice = ChoiceRequest {
        prompt: Prompt::new(vec![ChatMessage::user("A or B?")]),
        options: vec!["A".into(), "B".into()],
    };
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
    let c = b.choose(&[choice])[0].as_ref().unwrap().clone();
    assert_eq!(c.logprobs, vec![-0.25, -1.5]);
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
    assert_eq!(again[3].as_ref().unwrap().completions[0].text, CANNED);
    let cache = &second.stats().unwrap()["cache"];
    assert_eq!(
        (cache["hits"].as_u64(), cache["misses"].as_u64()),
        (Some(6), Some(0))
    );
}

#[test]
fn revise_through_the_openai_backend_writes_the_servers_answers() {
    let server = FakeServer::start(&[Fault::ServerError]);
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
        assert_eq!(r["initial"], CANNED);
        assert_eq!(r["rounds"][0]["critique"], CANNED);
        assert_eq!(r["final"], CANNED);
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
