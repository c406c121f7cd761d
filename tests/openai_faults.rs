//! The fault suite of `--backend openai`, on loopback: `cai label` through a server that
//! answers 429 with Retry-After, 500, 502 and 503, drops connections without an answer, cuts
//! bodies short, drips an answer past the timeout, sends a body that is not JSON and drops the
//! logprobs asked for writes the same label file, byte for byte, as a run against a server
//! without faults, and the manifest's counters equal the faults injected. (A server that never
//! returns logprobs ends in a clear error once the retries are spent: `tests/openai.rs`.)

#[path = "util/fake_server.rs"]
mod fake_server;
mod util;

use std::path::Path;
use std::time::Duration;

use fake_server::{FakeServer, Fault};
use serde_json::Value;
use util::{cai, ok, root};

/// Runs `cai label` against `url` in `mode`; returns the label file and the backend counters.
fn label(dir: &Path, url: &str, mode: &str, out: &str) -> (String, Value) {
    let mut cmd = cai(dir);
    util::without_proxies(&mut cmd);
    cmd.args(["label", "--backend", "openai", "--base-url", url])
        .args(["--mode", mode, "--samples", "2", "--few-shot", "1"])
        .args([
            "--concurrency",
            "4",
            "--timeout",
            "1",
            "--connect-timeout",
            "1",
        ])
        .args([
            "--retries",
            "6",
            "--backoff",
            "0.01",
            "--no-cache",
            "--quiet",
        ])
        .args(["--out", out])
        .arg("--pairs")
        .arg(root().join("data/sample-pairs.jsonl"))
        .arg("--constitution")
        .arg(root().join("constitutions/harmless.yaml"));
    ok(&mut cmd);
    let text = std::fs::read_to_string(dir.join(out)).unwrap();
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{out}.manifest.json"))).unwrap(),
    )
    .unwrap();
    (text, m["stats"]["backend"].clone())
}

/// Every kind of fault twice, each after a good answer.
fn faults() -> Vec<Fault> {
    let kinds = [
        Fault::TooMany { retry_after_s: 0 },
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::Drop,
        Fault::CutShort,
        Fault::Drip(Duration::from_millis(100)),
        Fault::Malformed,
        Fault::NoLogprobs,
    ];
    let pass = Fault::Slow(Duration::ZERO);
    kinds
        .iter()
        .chain(&kinds)
        .flat_map(|f| [pass.clone(), f.clone()])
        .collect()
}

fn suite(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let clean = FakeServer::start(&[]);
    let (want, clean_stats) = label(dir.path(), &clean.url, mode, "clean.jsonl");
    assert_eq!(want.lines().count(), 12, "every pair labelled");
    assert_eq!(clean_stats["retries"], 0);

    let faulty = FakeServer::start(&faults());
    let (got, s) = label(dir.path(), &faulty.url, mode, "faulty.jsonl");
    assert_eq!(
        got, want,
        "{mode}: the labels differ from the fault-free run"
    );
    let n = |name: &str| faulty.injected(name) as u64;
    let injected = n("TooMany")
        + n("Status")
        + n("Drop")
        + n("CutShort")
        + n("Drip")
        + n("Malformed")
        + n("NoLogprobs");
    assert_eq!(injected, 18, "every fault was injected");
    let count = |k: &str| s[k].as_u64().unwrap();
    assert_eq!(count("http_429"), n("TooMany"), "{s}");
    assert_eq!(count("http_5xx"), n("Status"), "{s}");
    assert_eq!(count("connection_errors"), n("Drop") + n("CutShort"), "{s}");
    assert_eq!(count("timeouts"), n("Drip"), "{s}");
    assert_eq!(count("invalid_json"), n("Malformed"), "{s}");
    assert_eq!(count("incomplete_answers"), n("NoLogprobs"), "{s}");
    assert_eq!(count("retries"), injected, "{s}");
    // The same refusals as without faults (the probe of llama.cpp's /apply-template: 404).
    assert_eq!(
        count("failures"),
        clean_stats["failures"].as_u64().unwrap(),
        "{s}"
    );
    assert_eq!(
        count("requests"),
        clean_stats["requests"].as_u64().unwrap() + injected,
        "{s}"
    );
    util::figure(&format!(
        "openai {mode}: {injected} faults injected (429: {}, 5xx: {}, dropped: {}, cut short: \
         {}, drip past timeout: {}, not JSON: {}, logprobs missing: {}), {} retries, {} \
         records byte-identical to the fault-free run",
        n("TooMany"),
        n("Status"),
        n("Drop"),
        n("CutShort"),
        n("Drip"),
        n("Malformed"),
        n("NoLogprobs"),
        count("retries"),
        got.lines().count()
    ));
}

#[test]
fn direct_labels_survive_every_fault_unchanged() {
    suite("direct");
}

#[test]
fn cot_labels_survive_every_fault_unchanged() {
    suite("cot");
}
