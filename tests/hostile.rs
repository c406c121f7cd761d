//! The hostile corpus: crafted model files, templates and inputs, each run through `cai
//! perplexity`, `cai label` and `cai revise` (whichever apply) under a memory limit
//! (RLIMIT_AS) and a time limit. Every entry must end with exit code 1 (never a signal or a
//! panic's 101), one error line naming the file at fault, a peak resident memory under
//! [`PEAK_RSS`], no file outside the run's output folder changed, and no secret in stderr or
//! on disk. The corpus is generated here at test time (`scripts/hostile-corpus.sh` writes it
//! to a folder for trying by hand); nothing binary is committed.
#![cfg(unix)]

#[path = "util/tiny_gguf.rs"]
mod tiny_gguf;
mod util;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tiny_gguf::{Gguf, Md};
use util::root;

/// Address space a run may take (RLIMIT_AS): an unbounded allocation fails fast.
const ADDRESS_SPACE: u64 = 8 << 30;
/// Peak resident memory a run may reach.
const PEAK_RSS: u64 = 1 << 30;
/// Wall time a run may take.
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// Planted in the environment (and one entry's URL): must never be printed or written.
const SECRET: &str = "sk-hostile-SECRET-7f3a9c";

/// What a stage is run with.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    Perplexity,
    Label,
    Revise,
}

/// What must happen.
#[derive(Clone, Debug)]
enum Expect {
    /// Exit 1 with one error line containing this text (the file at fault).
    Fail(String),
    /// Exit 0 with a warning line containing this text (e.g. `pairs.jsonl:1`).
    Warn(String),
}

struct Entry {
    name: &'static str,
    stages: Vec<Stage>,
    /// Files written into the inputs folder before the run.
    files: Vec<(String, Vec<u8>)>,
    /// Overrides of the default arguments (`--model`, `--pairs`, ...), by flag.
    args: Vec<(&'static str, String)>,
    expect: Expect,
    /// Peak resident memory bound, when lower than [`PEAK_RSS`].
    peak: Option<u64>,
}

fn model_entry(name: &'static str, file: Vec<u8>, stages: &[Stage]) -> Entry {
    Entry {
        name,
        stages: stages.to_vec(),
        files: vec![("model.gguf".into(), file)],
        args: vec![],
        expect: Expect::Fail("model.gguf".into()),
        peak: None,
    }
}

/// The valid tiny model with `f` applied.
fn mutated(f: impl FnOnce(&mut Gguf)) -> Vec<u8> {
    let mut g = Gguf::tiny();
    f(&mut g);
    g.bytes()
}

/// The corpus.
fn corpus() -> Vec<Entry> {
    use Stage::*;
    let all = [Perplexity, Label, Revise];
    let chat = [Label, Revise];
    let mut out = vec![
        // Item 2: lengths and counts far beyond the file.
        model_entry(
            "string_length_2_62",
            mutated(|g| {
                g.md_mut("general.name").bytes = (1u64 << 62).to_le_bytes().to_vec();
            }),
            &all,
        ),
        model_entry(
            "array_of_2_40_elements",
            mutated(|g| *g.md_mut("tokenizer.ggml.scores") = Md::array(6, 1 << 40, vec![])),
            &all,
        ),
        model_entry(
            "n_dims_2_32_minus_1",
            mutated(|g| g.tensor_mut("blk.0.attn_q.weight").n_dims = Some(u32::MAX)),
            &all,
        ),
        // Item 3: dims whose product overflows.
        model_entry(
            "token_embd_2_32_by_2_32",
            mutated(|g| g.tensor_mut("token_embd.weight").dims = vec![1 << 32, 1 << 32]),
            &all,
        ),
        // Item 4: an offset that wraps around u64; a tensor of the wrong shape.
        model_entry(
            "offset_wraps_around",
            mutated(|g| g.tensor_mut("blk.0.ffn_down.weight").offset = Some(u64::MAX - 31)),
            &all,
        ),
        model_entry(
            "ffn_down_wrong_shape",
            mutated(|g| {
                g.tensor_mut("blk.0.ffn_down.weight").dims =
                    vec![tiny_gguf::FF as u64, tiny_gguf::HIDDEN as u64];
            }),
            &all,
        ),
        model_entry(
            "truncated_file",
            {
                let b = Gguf::tiny().bytes();
                b[..b.len() - 100].to_vec()
            },
            &all,
        ),
        model_entry(
            "block_count_2_40",
            mutated(|g| {
                *g.md_mut("llama.block_count") = Md {
                    kind: 10,
                    bytes: (1u64 << 40).to_le_bytes().to_vec(),
                }
            }),
            &all,
        ),
        model_entry(
            "context_2_31",
            mutated(|g| *g.md_mut("llama.context_length") = Md::u32(1 << 31)),
            &all,
        ),
        model_entry(
            "zero_heads",
            mutated(|g| *g.md_mut("llama.attention.head_count") = Md::u32(0)),
            &all,
        ),
        // Item 9: empty vocabulary; one larger than the embedding table.
        model_entry(
            "empty_vocabulary",
            mutated(|g| {
                *g.md_mut("tokenizer.ggml.tokens") = Md::strs(&[]);
                *g.md_mut("tokenizer.ggml.scores") = Md::f32s(&[]);
                *g.md_mut("tokenizer.ggml.token_type") = Md::i32s(&[]);
            }),
            &all,
        ),
        model_entry(
            "vocabulary_beyond_embedding",
            mutated(|g| {
                let t = g.tensor_mut("token_embd.weight");
                t.dims[0] = 100;
                t.data.truncate(100 * tiny_gguf::HIDDEN * 4);
            }),
            &all,
        ),
        // Item 5: a template that loops for ever; item 6: one that writes 100 MB.
        model_entry(
            "template_nested_loops",
            mutated(|g| {
                *g.md_mut("tokenizer.chat_template") = Md::str(
                    "{% for a in range(100000) %}{% for b in range(100000) %}\
                     {% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}",
                )
            }),
            &chat,
        ),
        model_entry(
            "template_100_mb_output",
            mutated(|g| {
                *g.md_mut("tokenizer.chat_template") = Md::str(
                    "{{ 'x' * 100000000 }}{% for m in messages %}{{ m.content }}{% endfor %}",
                )
            }),
            &chat,
        ),
        Entry {
            name: "model_is_dev_zero",
            stages: all.to_vec(),
            files: vec![],
            args: vec![("--model", "/dev/zero".into())],
            expect: Expect::Fail("/dev/zero".into()),
            peak: None,
        },
    ];
    // Item 6: one record far beyond any context is skipped by a character count, before it
    // is rendered or tokenized, with a warning naming the pairs file and line.
    let huge = "a".repeat(16 << 20);
    out.push(Entry {
        name: "pairs_record_of_16_mb",
        stages: vec![Label],
        files: vec![
            ("model.gguf".into(), Gguf::tiny().bytes()),
            (
                "pairs.jsonl".into(),
                format!(
                    "{{\"prompt\": \"hi\", \"response_a\": \"{huge}\", \"response_b\": \"no\"}}\n"
                )
                .into_bytes(),
            ),
        ],
        args: vec![],
        expect: Expect::Warn("pairs.jsonl:1".into()),
        peak: Some(400 << 20),
    });
    out.push(Entry {
        name: "prompts_record_of_16_mb",
        stages: vec![Revise],
        files: vec![
            ("model.gguf".into(), Gguf::tiny().bytes()),
            (
                "prompts.jsonl".into(),
                format!("{{\"prompt\": \"{huge}\"}}\n").into_bytes(),
            ),
        ],
        args: vec![],
        expect: Expect::Warn("prompts.jsonl:1".into()),
        peak: Some(400 << 20),
    });
    // Items 1, 7 and 8: nothing a user owns is damaged, bounded reads, no secrets.
    let notes = b"my notes, not cai's\n".to_vec();
    out.push(Entry {
        name: "out_is_a_notes_file",
        stages: vec![Label, Revise],
        files: vec![("notes.txt".into(), notes.clone())],
        args: vec![
            ("--out", "@inputs/notes.txt".into()),
            ("--backend", "mock".into()),
        ],
        expect: Expect::Fail("notes.txt".into()),
        peak: None,
    });
    out.push(Entry {
        name: "out_is_a_symlink",
        stages: vec![Label, Revise],
        files: vec![("notes.txt".into(), notes)],
        args: vec![("--out", "@symlink".into()), ("--backend", "mock".into())],
        expect: Expect::Fail("out.jsonl".into()),
        peak: None,
    });
    out.push(Entry {
        name: "pairs_is_dev_zero",
        stages: vec![Label],
        files: vec![],
        args: vec![
            ("--pairs", "/dev/zero".into()),
            ("--backend", "mock".into()),
        ],
        expect: Expect::Fail("/dev/zero".into()),
        peak: None,
    });
    let constitution = std::fs::read_to_string(root().join("constitutions/harmless.yaml"))
        .expect("constitutions/harmless.yaml");
    for (name, stage, template) in [
        ("feedback_template_is_dev_zero", Label, "feedback"),
        ("critique_template_is_dev_zero", Revise, "critique"),
    ] {
        let yaml = format!("{constitution}templates:\n  {template}: /dev/zero\n");
        out.push(Entry {
            name,
            stages: vec![stage],
            files: vec![("constitution.yaml".into(), yaml.into_bytes())],
            args: vec![
                ("--constitution", "@inputs/constitution.yaml".into()),
                ("--backend", "mock".into()),
            ],
            expect: Expect::Fail("/dev/zero".into()),
            peak: None,
        });
    }
    out.push(Entry {
        name: "secret_in_base_url",
        stages: vec![Label],
        files: vec![],
        args: vec![
            ("--backend", "openai".into()),
            ("--base-url", format!("http://user:{SECRET}@127.0.0.1:9/v1")),
        ],
        expect: Expect::Fail("127.0.0.1".into()),
        peak: None,
    });
    out
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            } else {
                out.insert(
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            }
        }
    }
    out
}

/// Exit status and peak resident bytes of a run of `cmd` under the limits.
fn run_limited(cmd: &mut Command) -> (Option<i32>, Option<i32>, u64, bool) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: ADDRESS_SPACE,
                rlim_max: ADDRESS_SPACE,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Reaped below with wait4, which also gives the peak memory.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("cai starts");
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut timed_out = false;
    loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child with valid out-pointers.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            let peak = usage.ru_maxrss as u64 * 1024;
            let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
            return (code, signal, peak, timed_out);
        }
        if start.elapsed() > TIME_LIMIT && !timed_out {
            timed_out = true;
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `stage` of `entry` in a fresh folder; returns the failures found.
fn check(entry: &Entry, stage: Stage) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("inputs");
    let outdir = tmp.path().join("out");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::create_dir_all(&outdir).unwrap();
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
    std::fs::write(inputs.join("text.txt"), text).unwrap();
    std::fs::write(
        inputs.join("pairs.jsonl"),
        "{\"prompt\": \"hi\", \"response_a\": \"yes\", \"response_b\": \"no\"}\n",
    )
    .unwrap();
    std::fs::write(inputs.join("prompts.jsonl"), "{\"prompt\": \"hi\"}\n").unwrap();
    for (name, bytes) in &entry.files {
        std::fs::write(inputs.join(name), bytes).unwrap();
    }
    std::os::unix::fs::symlink(inputs.join("notes.txt"), outdir.join("out.jsonl")).ok();
    if !entry.args.iter().any(|(_, v)| v == "@symlink") {
        std::fs::remove_file(outdir.join("out.jsonl")).ok();
    }
    let before = snapshot(&inputs);
    let mut args: Vec<(&str, String)> = vec![
        ("--model", inputs.join("model.gguf").display().to_string()),
        ("--out", outdir.join("out.jsonl").display().to_string()),
    ];
    match stage {
        Stage::Perplexity => {
            args[1] = ("--file", inputs.join("text.txt").display().to_string());
            args.push(("--ctx", "16".into()));
        }
        Stage::Label => {
            args.push(("--pairs", inputs.join("pairs.jsonl").display().to_string()));
            let c = root().join("constitutions/harmless.yaml");
            args.push(("--constitution", c.display().to_string()));
        }
        Stage::Revise => {
            args.push((
                "--prompts",
                inputs.join("prompts.jsonl").display().to_string(),
            ));
            let c = root().join("constitutions/harmless.yaml");
            args.push(("--constitution", c.display().to_string()));
            args.push(("--rounds", "1".into()));
        }
    }
    for (flag, value) in &entry.args {
        let value = match value.as_str() {
            "@symlink" => outdir.join("out.jsonl").display().to_string(),
            v if v.starts_with("@inputs/") => inputs.join(&v[8..]).display().to_string(),
            v => v.to_string(),
        };
        if stage == Stage::Perplexity && *flag == "--out" {
            continue;
        }
        match args.iter_mut().find(|(f, _)| f == flag) {
            Some(a) => a.1 = value,
            None => args.push((flag, value)),
        }
    }
    let sub = match stage {
        Stage::Perplexity => "perplexity",
        Stage::Label => "label",
        Stage::Revise => "revise",
    };
    let stderr_path = tmp.path().join("stderr.txt");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cai"));
    cmd.current_dir(&outdir)
        .arg(sub)
        .arg("--quiet")
        .env_remove("RUST_BACKTRACE")
        .env_remove("CAI_DEBUG")
        .env("OPENAI_API_KEY", SECRET)
        .env("CAI_API_KEY", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    for (flag, value) in &args {
        cmd.arg(flag).arg(value);
    }
    let started = Instant::now();
    let (code, signal, peak, timed_out) = run_limited(&mut cmd);
    let seconds = started.elapsed().as_secs_f64();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let what = format!("{} / {sub}", entry.name);
    util::figure(&format!(
        "hostile {what}: exit {code:?} signal {signal:?}, {seconds:.2} s, peak {:.0} MiB: {}",
        peak as f64 / (1 << 20) as f64,
        stderr
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(150)
            .collect::<String>()
    ));
    let mut bad = Vec::new();
    if timed_out {
        bad.push(format!("{what}: still running after {TIME_LIMIT:?}"));
    }
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("cai: warning"))
        .collect();
    match &entry.expect {
        Expect::Fail(name) => {
            if code != Some(1) {
                bad.push(format!(
                    "{what}: exit {code:?} signal {signal:?}, want exit 1; stderr: {stderr}"
                ));
            }
            if errors.len() != 1 || !errors[0].contains(name.as_str()) {
                bad.push(format!(
                    "{what}: want one error line naming {name}, got: {stderr}"
                ));
            }
        }
        Expect::Warn(place) => {
            if code != Some(0) || !stderr.contains(place.as_str()) {
                bad.push(format!(
                    "{what}: want exit 0 and a warning naming {place}, got exit {code:?} \
                     signal {signal:?}: {stderr}"
                ));
            }
        }
    }
    let bound = entry.peak.unwrap_or(PEAK_RSS);
    if peak > bound {
        bad.push(format!("{what}: peak memory {peak} bytes, bound {bound}"));
    }
    if snapshot(&inputs) != before {
        bad.push(format!(
            "{what}: files outside the run's output folder changed"
        ));
    }
    let leaked_to_disk = snapshot(tmp.path())
        .iter()
        .filter(|(p, _)| *p != &stderr_path)
        .any(|(_, b)| String::from_utf8_lossy(b).contains(SECRET));
    if stderr.contains(SECRET) || leaked_to_disk {
        bad.push(format!("{what}: the secret was printed or written"));
    }
    bad
}

fn run_corpus() -> Vec<String> {
    let mut bad = Vec::new();
    for entry in corpus() {
        for &stage in &entry.stages {
            bad.extend(check(&entry, stage));
        }
    }
    bad
}

#[test]
fn hostile_files_and_inputs_fail_cleanly() {
    let bad = run_corpus();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The harness itself: the valid tiny model runs (so each failure above is its entry's
/// doing), and a run that crashes is caught as one.
#[test]
fn hostile_harness_accepts_the_valid_model() {
    let entry = Entry {
        name: "valid",
        stages: vec![Stage::Perplexity],
        files: vec![("model.gguf".into(), Gguf::tiny().bytes())],
        args: vec![],
        expect: Expect::Fail("model.gguf".into()),
        peak: None,
    };
    // Expecting failure from a valid model must report exactly the wrong exit code.
    let bad = check(&entry, Stage::Perplexity);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].contains("exit Some(0)"), "{bad:?}");
}

/// Writes the corpus's files into `$CAI_HOSTILE_OUT` (see `scripts/hostile-corpus.sh`).
#[test]
#[ignore = "writes the corpus for trying by hand"]
fn write_hostile_corpus() {
    let Ok(dir) = std::env::var("CAI_HOSTILE_OUT") else {
        panic!("set CAI_HOSTILE_OUT to a folder");
    };
    for entry in corpus() {
        let d = Path::new(&dir).join(entry.name);
        std::fs::create_dir_all(&d).unwrap();
        for (name, bytes) in &entry.files {
            std::fs::write(d.join(name), bytes).unwrap();
        }
    }
}

/// Bounded fuzzing of the GGUF reader through the whole loader: seeded random mutations of
/// the valid tiny model (bytes flipped, lengths and counts set to extremes, the file cut),
/// each loaded in-process; none may panic, and every error names the file.
#[test]
fn fuzz_gguf_loader_never_panics() {
    use rand::{Rng, SeedableRng};
    let valid = Gguf::tiny().bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.gguf");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(34);
    let start = Instant::now();
    let mut runs = 0;
    // Header bytes only: the tensor data cannot make the reader fail.
    let header_len = valid.len() - (tiny_gguf::VOCAB * tiny_gguf::HIDDEN * 4);
    while runs < 400 && start.elapsed() < Duration::from_secs(20) {
        let mut b = valid.clone();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..header_len);
                    b[i] = rng.random();
                }
            }
            1 => {
                let i = rng.random_range(0..header_len - 8);
                let v: u64 = match rng.random_range(0..4) {
                    0 => u64::MAX,
                    1 => 1 << rng.random_range(30..63),
                    2 => rng.random_range(0..1 << 20),
                    _ => 0,
                };
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            2 => b.truncate(rng.random_range(0..valid.len())),
            _ => {
                let i = rng.random_range(0..header_len - 4);
                b[i..i + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            }
        }
        std::fs::write(&path, &b).unwrap();
        let result = std::panic::catch_unwind(|| {
            cai::llm::local::LocalBackend::open_gguf(&path, "fuzz", None).map(|_| ())
        });
        match result {
            Err(_) => {
                let keep = std::env::temp_dir().join("cai-fuzz-panic.gguf");
                std::fs::write(&keep, &b).unwrap();
                panic!(
                    "run {runs}: the loader panicked (file kept at {})",
                    keep.display()
                )
            }
            Ok(Err(e)) => {
                let e = format!("{e:#}");
                assert!(
                    e.contains("fuzz.gguf"),
                    "run {runs}: error names no file: {e}"
                );
                assert!(!e.contains('\n'), "run {runs}: error of several lines: {e}");
            }
            Ok(Ok(())) => {}
        }
        runs += 1;
    }
    assert!(runs >= 50, "only {runs} runs in the time allowed");
}

/// Bounded fuzzing of the pairs (JSONL) and constitution (YAML) readers: seeded mutations of
/// the shipped files; none may panic, and every error names the file.
#[test]
fn fuzz_jsonl_and_constitution_readers_never_panic() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let sources = [
        (
            "pairs.jsonl",
            std::fs::read(root().join("data/sample-pairs.jsonl")).unwrap(),
        ),
        (
            "constitution.yaml",
            std::fs::read(root().join("constitutions/harmless.yaml")).unwrap(),
        ),
    ];
    let start = Instant::now();
    for run in 0..300 {
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
        let (name, valid) = &sources[run % 2];
        let mut b = valid.clone();
        for _ in 0..rng.random_range(1..6) {
            let i = rng.random_range(0..b.len());
            match rng.random_range(0..3) {
                0 => b[i] = rng.random(),
                1 => b[i] = b"{}[]\":,\n-#\\"[rng.random_range(0..11)],
                _ => b.truncate(i),
            }
            if b.is_empty() {
                break;
            }
        }
        let path = dir.path().join(name);
        std::fs::write(&path, &b).unwrap();
        let result = std::panic::catch_unwind(|| match run % 2 {
            0 => cai::pairs::read_pairs(&path).map(|_| ()),
            _ => cai::constitution::Loaded::read(&path).map(|_| ()),
        });
        match result {
            Err(_) => panic!(
                "run {run}: the {name} reader panicked on {:?}",
                String::from_utf8_lossy(&b)
            ),
            Ok(Err(e)) => {
                let e = format!("{e:#}");
                assert!(e.contains(name), "run {run}: error names no file: {e}");
            }
            Ok(Ok(())) => {}
        }
    }
}
