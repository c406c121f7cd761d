//! `--backend openai` over HTTPS against a local TLS server whose certificate a private CA
//! signed (trusted through `--ca-cert` or `SSL_CERT_FILE`), through a CONNECT proxy
//! (`HTTPS_PROXY`, bypassed by `NO_PROXY`), with base URLs in every documented form; the API key
//! reaches the Authorization header and nothing else; a server's "context length exceeded"
//! skips the record with a warning.

#[path = "util/fake_server.rs"]
mod fake_server;
mod util;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use cai::llm::openai::{OpenaiBackend, OpenaiConfig};
use cai::llm::{Backend, ChoiceRequest, ContextOverflow, GenerateRequest, Prompt, SamplingParams};
use fake_server::{ConnectProxy, FakeServer, Fault, Flavor, TestCa, CANNED};
use serde_json::Value;
use util::{cai, fails, ok, root};

const KEY: &str = "sk-test-0123456789-secret";

/// A `cai` command with no proxy or CA settings inherited from the environment.
fn clean(dir: &Path) -> Command {
    let mut cmd = cai(dir);
    util::without_proxies(&mut cmd);
    for var in ["SSL_CERT_FILE", "NO_PROXY", "no_proxy"] {
        cmd.env_remove(var);
    }
    cmd.env("CAI_TEST_KEY", KEY);
    cmd
}

/// `cai STAGE --backend openai --base-url URL …` with the stage's inputs and a cache.
fn stage(dir: &Path, stage: &str, url: &str) -> Command {
    let mut cmd = clean(dir);
    cmd.args([stage, "--backend", "openai", "--base-url", url])
        .args(["--api-key-env", "CAI_TEST_KEY", "--timeout", "20"])
        .args(["--backoff", "0.01", "--limit", "2", "--quiet"])
        .args(["--out", &format!("{stage}.jsonl")])
        .arg("--cache-dir")
        .arg(dir.join("cache"));
    match stage {
        "label" => {
            cmd.args(["--few-shot", "1"])
                .arg("--pairs")
                .arg(root().join("data/sample-pairs.jsonl"))
                .arg("--constitution")
                .arg(root().join("constitutions/harmless.yaml"));
        }
        "revise" => {
            cmd.args(["--rounds", "1"])
                .arg("--prompts")
                .arg(root().join("data/sample-prompts.jsonl"))
                .arg("--constitution")
                .arg(root().join("constitutions/harmless.yaml"));
        }
        "sample" => {
            cmd.arg("--prompts")
                .arg(root().join("data/sample-prompts.jsonl"));
        }
        _ => unreachable!(),
    }
    cmd
}

/// Every file under `dir`, as text (lossy).
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn lines(dir: &Path, file: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn label_revise_and_sample_over_https_with_a_private_ca() {
    let ca = TestCa::new();
    let server = FakeServer::start_tls(&[Fault::Status(503)], &ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("private-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    // --ca-cert, with the OpenAI SDK's trailing /v1.
    let url_v1 = format!("{}/v1", server.url);
    ok(stage(dir.path(), "label", &url_v1)
        .arg("--ca-cert")
        .arg(&ca_file));
    let labels = lines(dir.path(), "label.jsonl");
    assert_eq!(labels.len(), 2);
    // SSL_CERT_FILE, bare root.
    for s in ["revise", "sample"] {
        ok(stage(dir.path(), s, &server.url).env("SSL_CERT_FILE", &ca_file));
        assert!(!lines(dir.path(), &format!("{s}.jsonl")).is_empty(), "{s}");
    }
    let revised = lines(dir.path(), "revise.jsonl");
    assert!(revised[0]["final"].as_str().unwrap().starts_with(CANNED));
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("label.jsonl.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["stats"]["backend"]["http_5xx"], 1, "{m}");
    assert_eq!(m["stats"]["backend"]["retries"], 1, "{m}");
    // Keep-alive: far fewer connections than requests.
    let requests = server.state.lines.lock().unwrap().len();
    let connections = server.state.connections.load(Ordering::SeqCst);
    assert!(
        connections * 2 < requests,
        "{connections} connections for {requests} requests"
    );
    // The key went out in the Authorization header of every request…
    let auth = server.state.auth.lock().unwrap().clone();
    assert_eq!(auth.len(), requests);
    assert!(auth.iter().all(|a| a == &format!("Bearer {KEY}")));
    // …and into no output, manifest or cache entry.
    let written = all_text(dir.path());
    assert!(written.contains("fake-model"), "outputs were read");
    assert!(!written.contains(KEY), "the API key was written to disk");
}

#[test]
fn an_untrusted_certificate_fails_at_once_with_a_hint() {
    let ca = TestCa::new();
    let server = FakeServer::start_tls(&[], &ca);
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&mut stage(dir.path(), "label", &server.url));
    assert!(
        err.contains("TLS error") && err.contains("--ca-cert") && err.contains(&server.url),
        "{err}"
    );
    assert!(!err.contains(KEY));
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    // Not retried: one connection, no request got through.
    assert_eq!(server.state.connections.load(Ordering::SeqCst), 1);
    assert!(server.state.lines.lock().unwrap().is_empty());
    // A CA file that is no PEM is named.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "hello").unwrap();
    let err = fails(stage(dir.path(), "label", &server.url).env("SSL_CERT_FILE", &bad));
    assert!(
        err.contains("SSL_CERT_FILE") && err.contains("bad.pem"),
        "{err}"
    );
}

#[test]
fn https_proxy_tunnels_and_no_proxy_bypasses() {
    let ca = TestCa::new();
    let server = FakeServer::start_tls(&[], &ca);
    let proxy = ConnectProxy::start();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    ok(stage(dir.path(), "sample", &server.url)
        .env("SSL_CERT_FILE", &ca_file)
        .env("HTTPS_PROXY", &proxy.url)
        .arg("--no-cache"));
    let through = proxy.tunnels.load(Ordering::SeqCst);
    assert!(through >= 1, "requests went through the proxy");
    ok(stage(dir.path(), "sample", &server.url)
        .env("SSL_CERT_FILE", &ca_file)
        .env("HTTPS_PROXY", &proxy.url)
        .env("NO_PROXY", "localhost")
        .arg("--no-cache"));
    assert_eq!(proxy.tunnels.load(Ordering::SeqCst), through, "NO_PROXY");
}

fn config(url: &str) -> OpenaiConfig {
    OpenaiConfig {
        base_urls: vec![url.to_string()],
        no_cache: true,
        timeout_s: 10.0,
        ..Default::default()
    }
}

#[test]
fn base_urls_with_or_without_v1_and_behind_a_prefix() {
    let bare = FakeServer::start(&[]);
    let gw = FakeServer::start_with(&[], None, "/gw/llm");
    let req = GenerateRequest {
        prompt: Prompt::new(vec![cai::chat::ChatMessage::user("hi")]),
        params: SamplingParams::default(),
        n: 1,
        seed: 0,
    };
    for url in [
        bare.url.clone(),
        format!("{}/", bare.url),
        format!("{}/v1", bare.url),
        format!("{}/v1/", bare.url),
        gw.url.clone(),
        format!("{}/v1", gw.url),
    ] {
        let b = OpenaiBackend::open(&config(&url), "default")
            .unwrap_or_else(|e| panic!("{url}: {e:#}"));
        assert_eq!(b.info().name, "fake-model", "{url}");
        assert!(b.generate(std::slice::from_ref(&req))[0].is_ok(), "{url}");
    }
    for s in [&bare, &gw] {
        let lines = s.state.lines.lock().unwrap();
        assert!(lines.iter().all(|l| !l.contains("/v1/v1")), "{lines:?}");
    }
    assert!(gw
        .state
        .lines
        .lock()
        .unwrap()
        .contains(&"POST /gw/llm/v1/chat/completions".to_string()));
}

#[test]
fn a_context_length_refusal_skips_the_record_with_a_warning() {
    let server = FakeServer::start(&[Fault::ContextLength]);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = stage(dir.path(), "sample", &server.url);
    cmd.args(["--concurrency", "1", "--no-cache"]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("sample.jsonl.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["stats"]["backend"]["failures"], 1, "{m}");
    assert_eq!(m["stats"]["backend"]["retries"], 0, "not retried: {m}");
    let written = lines(dir.path(), "sample.jsonl").len();
    assert_eq!(written, 1, "one of the two prompts skipped: {m}");
}

#[test]
fn vllm_llama_cpp_and_ollama_shapes() {
    let prompt = Prompt::new(vec![cai::chat::ChatMessage::user("one two three")]);
    let choice = ChoiceRequest {
        prompt: prompt.clone(),
        options: vec!["A".into(), "B".into()],
    };
    // (flavor, context the backend learns, token counts estimated?)
    for (flavor, context, estimated) in [
        (Flavor::Vllm, 2048, false),
        (Flavor::LlamaCpp, 4096, false),
        (Flavor::Ollama, 0, true),
    ] {
        let server = FakeServer::start_flavor(&[Fault::ContextLength], flavor);
        let b = OpenaiBackend::open(&config(&server.url), "default").unwrap();
        assert_eq!(b.info().context, context, "{flavor:?}");
        assert!(b.count_tokens(&prompt).unwrap() > 0, "{flavor:?}");
        let s = b.stats().unwrap();
        assert_eq!(
            s["estimated_token_counts"].as_u64().unwrap() > 0,
            estimated,
            "{flavor:?}: {s}"
        );
        // The server's own wording of "context length exceeded" is a context overflow.
        let e = b
            .choose(std::slice::from_ref(&choice))
            .remove(0)
            .unwrap_err();
        assert!(
            e.downcast_ref::<ContextOverflow>().is_some(),
            "{flavor:?}: {e:#}"
        );
        assert_eq!(b.stats().unwrap()["retries"], 0, "{flavor:?}");
        let c = b.choose(std::slice::from_ref(&choice)).remove(0).unwrap();
        assert_eq!(c.logprobs.len(), 2, "{flavor:?}");
    }
}
