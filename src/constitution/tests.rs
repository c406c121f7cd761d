use super::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const GOOD: &str = r#"name: test
version: 1.0
principles:
  - id: a
    critique: "Find harm."
    revision: "Remove harm."
    weight: 3
  - id: b
    critique: "Find lies."
    revision: "Remove lies."
comparison_principles:
  - id: c
    question: "Which is less harmful?"
examples:
  revision:
    - prompt: p
      response: r
      principle: a
      critique: c
      revision: v
  comparison:
    - conversation: q
      response_a: x
      response_b: y
      principle: c
      answer: A
"#;

fn load(text: &str) -> (tempfile::TempDir, Result<Loaded>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, text).unwrap();
    let r = Loaded::read(&p);
    (dir, r)
}

fn problems(text: &str) -> Vec<String> {
    let (_d, r) = load(text);
    let l = r.unwrap();
    l.validate()
        .iter()
        .map(|p| format!("{}:{}: {}", p.line, p.column, p.message))
        .collect()
}

#[test]
fn good_file_has_no_problems() {
    assert_eq!(problems(GOOD), Vec::<String>::new());
    let (_d, r) = load(GOOD);
    assert_eq!(r.unwrap().constitution.version, "1");
}

#[test]
fn duplicate_principle_id_names_both_lines() {
    // GOOD's first principle `a` is on line 4; the second one, renamed `a`, on line 8.
    let p = problems(&GOOD.replace("  - id: b", "  - id: a"));
    assert_eq!(p, vec!["8:5: duplicate principle id `a` (first at line 4)"]);
    // The comparison principle `c` is on line 12; a copy appended after it is on line 14.
    let twice = GOOD.replace(
        "    question: \"Which is less harmful?\"\n",
        "    question: \"Which is less harmful?\"\n  - id: c\n    question: \"Again?\"\n",
    );
    assert_eq!(
        problems(&twice),
        vec!["14:5: duplicate comparison principle id `c` (first at line 12)"]
    );
}

#[test]
fn empty_text_is_located() {
    let p = problems(&GOOD.replace("critique: \"Find lies.\"", "critique: \"  \""));
    assert_eq!(p, vec!["9:5: principle `b` has an empty critique request"]);
}

#[test]
fn nonpositive_weight_is_located() {
    let p = problems(&GOOD.replace("weight: 3", "weight: 0"));
    assert_eq!(
        p,
        vec!["7:5: principle `a` has weight 0; weights must be > 0"]
    );
}

#[test]
fn unknown_example_principle_and_bad_answer() {
    let p = problems(
        &GOOD
            .replace("      principle: a", "      principle: zz")
            .replace("answer: A", "answer: C"),
    );
    assert_eq!(
        p,
        vec![
            "18:7: revision example #1 names unknown principle `zz`",
            "26:7: comparison example #1 has answer `C`; use A or B",
        ]
    );
}

#[test]
fn unknown_key_is_a_parse_error_with_position() {
    let (_d, r) = load(&GOOD.replace("    weight: 3", "    wieght: 3"));
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("c.yaml:7:5: principles[0]: unknown field `wieght`"),
        "{e}"
    );
}

#[test]
fn malformed_yaml_names_line() {
    let (_d, r) = load("name: x\nprinciples: [\n");
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("c.yaml:3:1"), "{e}");
}

#[test]
fn template_missing_placeholder_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("crit.txt"),
        "### conversation\n### user\n{critique_request}\n",
    )
    .unwrap();
    let p = dir.path().join("c.yaml");
    std::fs::write(&p, format!("{GOOD}templates:\n  critique: crit.txt\n")).unwrap();
    let l = Loaded::read(&p).unwrap();
    let probs = l.validate();
    assert_eq!(probs.len(), 1);
    assert_eq!((probs[0].line, probs[0].column), (28, 3));
    assert!(
        probs[0]
            .message
            .contains("missing placeholder `{response}`"),
        "{}",
        probs[0].message
    );
}

#[test]
fn sampling_follows_weights() {
    // Weights 3:1 -> expected 7500/2500 of 10_000 draws. Chi-square with 1 degree of freedom
    // must stay below 10.83 (p = 0.001); the seed is fixed so this is deterministic.
    let (_d, r) = load(GOOD);
    let l = r.unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let draws = l.constitution.sample_principles(&mut rng, 10_000).unwrap();
    let a = draws.iter().filter(|p| p.id == "a").count() as f64;
    let b = 10_000.0 - a;
    let chi2 = (a - 7500.0).powi(2) / 7500.0 + (b - 2500.0).powi(2) / 2500.0;
    assert!(chi2 < 10.83, "a={a} b={b} chi2={chi2}");
}

#[test]
fn shipped_constitutions_are_valid() {
    for f in [
        "constitutions/harmless.yaml",
        "constitutions/helpful-honest.yaml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let l = Loaded::read_valid(&path).unwrap();
        let c = &l.constitution;
        assert!(
            c.principles.len() >= 10 && c.comparison_principles.len() >= 10,
            "{f}"
        );
        if f.contains("harmless") {
            assert!(c.principles.len() >= 16 && c.comparison_principles.len() >= 16);
        }
    }
}

#[test]
fn builtin_constitutions_load_from_any_folder() {
    // A bare name or the shipped default path, when no such file exists, loads the copy built
    // into the binary; its hash is the shipped file's (the same bytes).
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("constitutions/harmless.yaml");
    let want = Loaded::read_valid(&shipped).unwrap();
    let by_name = Loaded::read_valid(Path::new("harmless")).unwrap();
    assert_eq!(by_name.sha256, want.sha256);
    assert_eq!(by_name.constitution, want.constitution);
    let hh = Loaded::read_valid(Path::new("helpful-honest")).unwrap();
    assert_eq!(hh.constitution.name, "helpful-honest");
    assert_eq!(
        builtin(Path::new("constitutions/helpful-honest.yaml")),
        Some(BUILTIN[1].1)
    );
    // Only those spellings: another folder or an unknown name is a path, and a missing one
    // fails naming it and the built-ins.
    assert_eq!(builtin(Path::new("/elsewhere/harmless")), None);
    assert_eq!(builtin(Path::new("other/harmless.yaml")), None);
    let e = format!("{:#}", Loaded::read(Path::new("harmles")).err().unwrap());
    assert!(
        e.contains("no constitution harmles (built-in ones: harmless, helpful-honest)"),
        "{e}"
    );
}
