//! The documentation runs: every `cai …` and `bash …` line of README.md and docs/*.md is
//! checked against the binary (cheap stages run on the mock backend in a fresh folder, the rest
//! with `--help`: the subcommand and each flag the line uses must exist), and a fresh clone's
//! first commands work from any folder.

mod util;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use util::{cai, ok, root};

/// README.md and every docs/*.md, as (relative path, text).
fn doc_files() -> Vec<(String, String)> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root()).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// One documented command: where it is and its text, continuation lines joined.
#[derive(Debug)]
struct Documented {
    at: String,
    line: String,
}

/// The `cai …` / `bash …` lines of fenced blocks and of 4-space-indented blocks.
fn commands(file: &str, text: &str) -> Vec<Documented> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if let Some((start, mut acc)) = pending.take() {
            let piece = trimmed.trim_end();
            let more = piece.ends_with('\\');
            acc.push(' ');
            acc.push_str(piece.trim_end_matches('\\'));
            if more {
                pending = Some((start, acc));
            } else {
                out.push(Documented {
                    at: format!("{file}:{start}"),
                    line: acc,
                });
            }
            continue;
        }
        let in_block = fenced || raw.starts_with("    ");
        let cmd = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
        if !in_block || !(cmd.starts_with("cai ") || cmd.starts_with("bash ")) {
            continue;
        }
        let body = cmd.trim_end();
        if let Some(head) = body.strip_suffix('\\') {
            pending = Some((i + 1, head.to_string()));
        } else {
            out.push(Documented {
                at: format!("{file}:{}", i + 1),
                line: body.to_string(),
            });
        }
    }
    out
}

/// The words of a command line: comments dropped, optional `[…]` brackets opened.
fn words(line: &str) -> Vec<String> {
    let line = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    line.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
        .filter(|w| !w.is_empty() && w != "..." && w != "…")
        .collect()
}

/// The subcommand path (`label`, `train sft`, `constitution show`) and the flags used.
fn parse(words: &[String]) -> (Vec<String>, Vec<String>) {
    let mut sub = Vec::new();
    for w in &words[1..] {
        let nested = sub.len() == 1 && (sub[0] == "train" || sub[0] == "constitution");
        if sub.is_empty() || nested {
            sub.push(w.clone());
        } else {
            break;
        }
    }
    let flags = words
        .iter()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap().to_string())
        .collect();
    (sub, flags)
}

/// `--help` of a subcommand, or why it failed.
fn help(cache: &mut HashMap<Vec<String>, String>, sub: &[String]) -> String {
    cache
        .entry(sub.to_vec())
        .or_insert_with(|| {
            let dir = tempfile::tempdir().unwrap();
            ok(cai(dir.path()).args(sub).arg("--help"))
        })
        .clone()
}

/// A fresh folder holding copies of the repository's `dirs` (data/, constitutions/), as a
/// clone has them, and nothing else.
fn fresh_folder_with(dirs: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for d in dirs {
        std::fs::create_dir(dir.path().join(d)).unwrap();
        for e in std::fs::read_dir(root().join(d)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join(d).join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn fresh_folder_with_data() -> tempfile::TempDir {
    fresh_folder_with(&["data"])
}

/// Cheap lines are run, not just checked: mock-backend stages, constitution checks, and
/// compare/export of files an earlier line of the same page wrote.
fn runs_cheaply(sub: &[String], words: &[String], dir: &Path) -> bool {
    let inputs_exist = || {
        words.windows(2).all(|w| {
            !matches!(w[0].as_str(), "--human" | "--ai" | "--input") || dir.join(&w[1]).is_file()
        })
    };
    match sub[0].as_str() {
        "constitution" => true,
        "compare" | "export" => inputs_exist(),
        _ => words
            .windows(2)
            .any(|w| w[0] == "--backend" && w[1] == "mock"),
    }
}

#[test]
fn every_documented_command_exists_and_cheap_ones_run() {
    let mut cache = HashMap::new();
    let mut checked = 0;
    let mut ran = 0;
    for (file, text) in doc_files() {
        // One clone-like folder per page: its cheap lines run in order, as a reader would.
        let dir = fresh_folder_with(&["data", "constitutions"]);
        for d in commands(&file, &text) {
            let w = words(&d.line);
            if w[0] == "bash" {
                let script = w
                    .get(1)
                    .unwrap_or_else(|| panic!("{}: bash without a script", d.at));
                assert!(
                    root().join(script).is_file(),
                    "{}: `{}` names a script that is not in the repository",
                    d.at,
                    d.line
                );
                checked += 1;
                continue;
            }
            let (sub, flags) = parse(&w);
            assert!(
                !sub.is_empty(),
                "{}: `{}` names no subcommand",
                d.at,
                d.line
            );
            let h = help(&mut cache, &sub);
            for flag in &flags {
                let present = h.match_indices(flag.as_str()).any(|(i, _)| {
                    let next = h[i + flag.len()..].chars().next();
                    !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
                });
                assert!(
                    present,
                    "{}: `cai {}` has no flag {flag} (documented as `{}`)",
                    d.at,
                    sub.join(" "),
                    d.line
                );
            }
            if runs_cheaply(&sub, &w, dir.path()) {
                let out = cai(dir.path()).args(&w[1..]).output().unwrap();
                assert!(
                    out.status.success(),
                    "{}: `{}` failed: {}",
                    d.at,
                    d.line,
                    String::from_utf8_lossy(&out.stderr)
                );
                ran += 1;
            }
            checked += 1;
        }
    }
    // README.md and docs/ hold some 40 command lines; a parser that found none would pass.
    assert!(checked >= 30, "only {checked} documented commands found");
    // README.md 1 (label on mock), docs/label.md 3 (label, compare, export), docs/revise.md 2
    // (revise, export), docs/sample.md 1, docs/constitutions.md 2 (check, show).
    assert!(ran >= 9, "only {ran} documented commands ran");
}

#[test]
fn docs_depend_on_nothing_outside_the_clone() {
    for (file, text) in doc_files() {
        for (i, line) in text.lines().enumerate() {
            let marked = line.contains("needs ../shared, a developer checkout");
            assert!(
                marked || !(line.contains("../shared") || line.contains("/work/shared")),
                "{file}:{}: names a path outside the repository: {line}",
                i + 1
            );
        }
    }
}

#[test]
fn docs_describe_the_project_not_its_history() {
    for (file, text) in doc_files() {
        for (i, line) in text.lines().enumerate() {
            let l = line.to_lowercase();
            for word in ["session ", "issue ", "branch `", "speed3"] {
                assert!(
                    !l.contains(word),
                    "{file}:{}: development history (`{word}`): {line}",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn readme_is_short_and_its_links_exist() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let n = readme.lines().count();
    assert!(n <= 250, "README.md has {n} lines (at most 250)");
    // The first lines are the two commands a newcomer runs.
    assert!(
        readme.starts_with("# cai\n\n    bash scripts/quickstart.sh\n    bash scripts/test.sh\n")
    );
    for (file, text) in doc_files() {
        let base = root().join(&file);
        let base = base.parent().unwrap();
        for (start, _) in text.match_indices("](") {
            let rest = &text[start + 2..];
            let target = &rest[..rest.find(')').unwrap()];
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap();
            assert!(
                base.join(path).exists(),
                "{file}: link to {target}, which is not in the repository"
            );
        }
    }
}

/// The manifest of `out` (`X.manifest.json` beside it).
fn manifest(out: &Path) -> Value {
    let name = format!(
        "{}.manifest.json",
        out.file_name().unwrap().to_str().unwrap()
    );
    let text = std::fs::read_to_string(out.with_file_name(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

#[test]
fn label_and_revise_run_in_a_fresh_folder_with_their_defaults() {
    // A fresh folder with the clone's data/ but no constitutions/ and no runs/: the default
    // --constitution (constitutions/harmless.yaml) is the built-in copy, and the default --out
    // (runs/labels.jsonl, runs/revisions.jsonl) gets its folder created.
    let dir = fresh_folder_with_data();
    ok(cai(dir.path()).args(["label", "--backend", "mock", "--quiet"]));
    let labels = dir.path().join("runs/labels.jsonl");
    // data/sample-pairs.jsonl has 12 pairs: one label row each.
    assert_eq!(
        std::fs::read_to_string(&labels).unwrap().lines().count(),
        12
    );
    let shipped = std::fs::read(root().join("constitutions/harmless.yaml")).unwrap();
    let m = manifest(&labels);
    assert_eq!(m["constitution"]["name"], "harmless");
    assert_eq!(m["constitution"]["sha256"], sha256_hex(&shipped).as_str());

    ok(cai(dir.path()).args(["revise", "--backend", "mock", "--quiet"]));
    let revisions = dir.path().join("runs/revisions.jsonl");
    // data/sample-prompts.jsonl has 12 prompts: one record each.
    assert_eq!(
        std::fs::read_to_string(&revisions).unwrap().lines().count(),
        12
    );

    // A built-in by name, from the same folder.
    ok(cai(dir.path()).args([
        "label",
        "--backend",
        "mock",
        "--quiet",
        "--constitution",
        "helpful-honest",
        "--out",
        "runs/hh.jsonl",
    ]));
    assert_eq!(
        manifest(&dir.path().join("runs/hh.jsonl"))["constitution"]["name"],
        "helpful-honest"
    );
}

#[test]
fn an_existing_constitution_file_wins_over_the_builtin() {
    // A user's own constitutions/harmless.yaml (here: the helpful-honest text) is read, not
    // replaced by the built-in of the same path.
    let dir = fresh_folder_with_data();
    std::fs::create_dir(dir.path().join("constitutions")).unwrap();
    let own = std::fs::read(root().join("constitutions/helpful-honest.yaml")).unwrap();
    std::fs::write(dir.path().join("constitutions/harmless.yaml"), &own).unwrap();
    ok(cai(dir.path()).args(["label", "--backend", "mock", "--quiet"]));
    let m = manifest(&dir.path().join("runs/labels.jsonl"));
    assert_eq!(m["constitution"]["name"], "helpful-honest");
    assert_eq!(m["constitution"]["sha256"], sha256_hex(&own).as_str());
}

#[test]
fn pipeline_runs_from_a_fresh_folder_with_the_default_constitution() {
    // No constitutions/ folder: the pipeline's default (constitutions/harmless.yaml) is hashed
    // and copied into the run folder from the built-in, byte for byte.
    let dir = fresh_folder_with_data();
    std::fs::write(
        dir.path().join("p.yaml"),
        "run_dir: runs/p\nbackend: mock\nrevise:\n  prompts: data/sample-prompts.jsonl\n",
    )
    .unwrap();
    ok(cai(dir.path()).args(["pipeline", "--config", "p.yaml"]));
    let copy = std::fs::read(dir.path().join("runs/p/constitution.yaml")).unwrap();
    assert_eq!(
        copy,
        std::fs::read(root().join("constitutions/harmless.yaml")).unwrap()
    );
    let revisions = dir.path().join("runs/p/revise");
    assert!(revisions.is_dir(), "{}", revisions.display());
}
