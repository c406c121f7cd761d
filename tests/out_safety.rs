//! Output-file safety, input bounds and secrets through the real binary: a user's file given as
//! `--out` (without a newline, behind a symbolic link, non-empty without a manifest) is refused
//! and left byte for byte; special files as inputs are refused quickly by name; a credential in
//! `--base-url` never reaches stderr or a manifest; a failed run leaves nothing that blocks the
//! corrected re-run, and a re-run under another config names the setting that differs.

#[path = "util/fake_server.rs"]
mod fake_server;
mod util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fake_server::{FakeServer, Fault};
use util::{cai, fails, ok, root};

/// `cai label` with the mock backend on the first sample pair into `out`.
fn label(dir: &Path, out: &str) -> Command {
    label_with(dir, out, "mock", &harmless())
}

/// `cai label` with `backend` and `constitution` on the first sample pair into `out`.
fn label_with(dir: &Path, out: &str, backend: &str, constitution: &Path) -> Command {
    let mut cmd = cai(dir);
    cmd.args(["label", "--backend", backend, "--limit", "1", "--quiet"])
        .args(["--out", out])
        .arg("--pairs")
        .arg(root().join("data/sample-pairs.jsonl"))
        .arg("--constitution")
        .arg(constitution);
    cmd
}

fn harmless() -> std::path::PathBuf {
    root().join("constitutions/harmless.yaml")
}

/// `cai sample` with the mock backend on the first sample prompt into `out`.
fn sample(dir: &Path, out: &str) -> Command {
    let mut cmd = cai(dir);
    cmd.args(["sample", "--backend", "mock", "--limit", "1", "--quiet"])
        .args(["--out", out])
        .arg("--prompts")
        .arg(root().join("data/sample-prompts.jsonl"));
    cmd
}

#[test]
fn notes_without_newline_survive_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "my notes, no newline").unwrap();
    let err = fails(&mut label(dir.path(), "notes.txt"));
    assert!(
        err.contains("--out notes.txt already exists (20 bytes) and is not an output of cai"),
        "{err}"
    );
    assert!(
        err.contains("notes.cai.jsonl"),
        "suggests another path: {err}"
    );
    assert_eq!(std::fs::read(&notes).unwrap(), b"my notes, no newline");
    assert!(!dir.path().join("notes.txt.manifest.json").exists());
}

#[test]
fn nonempty_unmanifested_out_is_refused() {
    // JSONL that cai did not write (no manifest beside it) is the user's too.
    let dir = tempfile::tempdir().unwrap();
    let mine = "{\"id\": \"mine\"}\n{\"id\": \"also mine\"}\n";
    std::fs::write(dir.path().join("out.jsonl"), mine).unwrap();
    for mut cmd in [
        label(dir.path(), "out.jsonl"),
        sample(dir.path(), "out.jsonl"),
    ] {
        let err = fails(&mut cmd);
        assert!(err.contains("--out out.jsonl already exists"), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
        mine
    );
}

#[cfg(unix)]
#[test]
fn symlink_target_survives() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.txt");
    std::fs::write(&target, "{\"id\": \"x\"}\nkeep me").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("link.jsonl")).unwrap();
    // A link to a file that does not exist yet is not followed either.
    std::os::unix::fs::symlink(
        dir.path().join("new.txt"),
        dir.path().join("dangling.jsonl"),
    )
    .unwrap();
    for out in ["link.jsonl", "dangling.jsonl"] {
        for mut cmd in [label(dir.path(), out), sample(dir.path(), out)] {
            let err = fails(&mut cmd);
            assert!(err.contains(&format!("{out} is a symbolic link")), "{err}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "{\"id\": \"x\"}\nkeep me"
    );
    assert!(!dir.path().join("new.txt").exists());
}

#[cfg(unix)]
#[test]
fn dev_zero_inputs_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let mut cmd = cai(dir.path());
    cmd.args(["label", "--backend", "mock", "--quiet", "--out", "l.jsonl"])
        .args(["--pairs", "/dev/zero"])
        .arg("--constitution")
        .arg(harmless());
    let err = fails(&mut cmd);
    assert!(
        err.contains("/dev/zero is a device, FIFO or socket, not a regular file"),
        "{err}"
    );
    // A template path of the constitution.
    let harmless = std::fs::read_to_string(root().join("constitutions/harmless.yaml")).unwrap();
    let c = dir.path().join("c.yaml");
    std::fs::write(
        &c,
        format!("{harmless}\ntemplates:\n  feedback: /dev/zero\n"),
    )
    .unwrap();
    let err = fails(&mut label_with(dir.path(), "l.jsonl", "mock", &c));
    assert!(
        err.contains("template /dev/zero is a device, FIFO or socket, not a regular file"),
        "{err}"
    );
    let mut cmd = cai(dir.path());
    cmd.args(["sample", "--backend", "mock", "--quiet", "--out", "s.jsonl"])
        .args(["--prompts", "/dev/zero"]);
    let err = fails(&mut cmd);
    assert!(err.contains("prompt file /dev/zero"), "{err}");
    // Reading 2 GB of zeros took tens of seconds and then ran out of memory.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert!(!dir.path().join("l.jsonl").exists() && !dir.path().join("s.jsonl").exists());
}

#[test]
fn secret_url_is_redacted_in_stderr_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let url = "http://user:sk-secret@127.0.0.1:9/v1";
    let mut cmd = label_with(dir.path(), "a.jsonl", "openai", &harmless());
    cmd.args(["--base-url", url]);
    let err = fails(&mut cmd);
    assert!(err.contains("http://***@127.0.0.1:9/v1"), "{err}");
    assert!(
        !err.contains("sk-secret") && !err.contains("user:"),
        "{err}"
    );
    // The mock backend does not parse the URL, but the manifest records the config.
    let mut cmd = label(dir.path(), "b.jsonl");
    cmd.args(["--base-url", url]);
    ok(&mut cmd);
    let manifest = std::fs::read_to_string(dir.path().join("b.jsonl.manifest.json")).unwrap();
    assert!(manifest.contains("http://***@127.0.0.1:9/v1"), "{manifest}");
    assert!(!manifest.contains("sk-secret"), "{manifest}");
}

#[test]
fn failed_run_then_corrected_rerun_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str, seed: &str| {
        let mut cmd = label_with(dir.path(), "l.jsonl", "openai", &harmless());
        util::without_proxies(&mut cmd);
        cmd.args(["--base-url", url, "--seed", seed]).args([
            "--retries",
            "0",
            "--no-cache",
            "--timeout",
            "5",
        ]);
        cmd
    };
    // Every chat request fails: the run ends with an error before its first record.
    let broken = FakeServer::start(&vec![Fault::Status(500); 64]);
    fails(&mut run(&broken.url, "1"));
    assert!(!dir.path().join("l.jsonl").exists());
    assert!(!dir.path().join("l.jsonl.manifest.json").exists());
    // The corrected run (another seed, a working server) is not refused.
    let good = FakeServer::start(&[]);
    ok(&mut run(&good.url, "2"));
    let text = std::fs::read_to_string(dir.path().join("l.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1);
    // Once it holds a record, a run under a third seed is refused, naming the setting.
    let err = fails(&mut run(&good.url, "3"));
    assert!(err.contains("config field `seed` differs: 2 → 3"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("l.jsonl")).unwrap(),
        text
    );
}

#[test]
fn label_rerun_with_another_constitution_names_it() {
    let dir = tempfile::tempdir().unwrap();
    ok(&mut label(dir.path(), "l.jsonl"));
    let harmless = std::fs::read_to_string(root().join("constitutions/harmless.yaml")).unwrap();
    let c = dir.path().join("c.yaml");
    std::fs::write(&c, format!("{harmless}\n# edited\n")).unwrap();
    let err = fails(&mut label_with(dir.path(), "l.jsonl", "mock", &c));
    assert!(err.contains("the constitution differs (sha256 "), "{err}");
}
