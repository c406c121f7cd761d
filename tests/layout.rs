//! The source layout's import rules, checked on the files themselves (through `crate::` and
//! `super::` paths outside comments and unit tests): no two files import each other, even
//! through others; `llm` (inference) and `train` (training) never import each other, and
//! `model_files` below them imports neither; clap is used only under `src/cli/`, whose flags
//! take their defaults from the configs' `Default` impls rather than from help texts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod util;

type Module = Vec<String>;

/// Every `.rs` file under `dir` with its module path (`src/a/b.rs` and `src/a/b/mod.rs` are
/// `a::b`; `lib.rs` is the crate root, `main.rs` is `main`), leaving out unit-test files.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
            continue;
        }
        let Some(stem) = name.strip_suffix(".rs") else {
            continue;
        };
        if stem == "tests" || stem.ends_with("_tests") {
            continue;
        }
        let mut m = prefix.to_vec();
        if !matches!(stem, "mod" | "lib") {
            m.push(stem.to_string());
        }
        out.insert(m, std::fs::read_to_string(&path).unwrap());
    }
}

/// The source without comment lines and without its `#[cfg(test)] mod tests` block (the
/// last item of a file, by the house style).
fn code(source: &str) -> String {
    let end = source
        .find("#[cfg(test)]\nmod tests {")
        .unwrap_or(source.len());
    source[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths written after each `anchor` (`crate::` or `super::`), with every item of a
/// `{a, b::c}` group as a path of its own.
fn paths_after(code: &str, anchor: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(anchor) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + anchor.len()..];
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let base: Vec<String> = rest[..len]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        out.push(base.clone());
        if rest[len..].starts_with('{') {
            let group = &rest[len + 1..rest[len..].find('}').map_or(len + 1, |e| len + e)];
            for item in group.split(',') {
                let item = item.split(" as ").next().unwrap().trim();
                if item.is_empty() || item == "self" || item.contains('{') {
                    continue;
                }
                let mut p = base.clone();
                p.extend(item.split("::").map(str::to_string));
                out.push(p);
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &[String], all: &BTreeMap<Module, String>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| all.contains_key(m))
}

fn imports(all: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    all.iter()
        .map(|(m, source)| {
            let code = code(source);
            let parent = m[..m.len().saturating_sub(1)].to_vec();
            let absolute = paths_after(&code, "crate::");
            let relative = paths_after(&code, "super::").into_iter().map(|p| {
                // `super::super::x`: one level up per leading `super`.
                let ups = p.iter().take_while(|s| *s == "super").count();
                let mut full = parent[..parent.len().saturating_sub(ups)].to_vec();
                full.extend(p.into_iter().skip(ups));
                full
            });
            let deps = absolute
                .into_iter()
                .chain(relative)
                .filter_map(|p| resolve(&p, all))
                .filter(|d| d != m && !d.is_empty())
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> BTreeSet<BTreeSet<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, (usize, usize)>,
        stack: Vec<&'a Module>,
        found: BTreeSet<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let i = s.index.len();
        s.index.insert(v, (i, i));
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = s.edges.get_key_value(w).map_or(w, |(k, _)| k);
            match s.index.get(w).copied() {
                None => {
                    visit(s, w);
                    let low = s.index[w].1.min(s.index[v].1);
                    s.index.get_mut(v).unwrap().1 = low;
                }
                Some((wi, _)) if s.stack.contains(&w) => {
                    let low = wi.min(s.index[v].1);
                    s.index.get_mut(v).unwrap().1 = low;
                }
                Some(_) => {}
            }
        }
        let (vi, vl) = s.index[v];
        if vi == vl {
            let mut group = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                group.insert(w.join("::"));
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                s.found.insert(group);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        stack: Vec::new(),
        found: BTreeSet::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn sources() -> BTreeMap<Module, String> {
    let mut all = BTreeMap::new();
    modules(&util::root().join("src"), &[], &mut all);
    all
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let found = cycles(&imports(&sources()));
    assert!(found.is_empty(), "import cycles (break them): {found:?}");
}

/// Modules under `layer` that import a module under one of `above`.
fn imports_into(layer: &str, above: &[&str]) -> Vec<String> {
    let edges = imports(&sources());
    let mut bad = Vec::new();
    for (m, deps) in &edges {
        if m.first().map(String::as_str) != Some(layer) {
            continue;
        }
        for d in deps {
            if above.contains(&d[0].as_str()) {
                bad.push(format!("{} -> {}", m.join("::"), d.join("::")));
            }
        }
    }
    bad
}

#[test]
fn inference_and_training_never_import_each_other() {
    // The subcommands and what runs them: nothing below may import them.
    let top = [
        "cli",
        "stages",
        "pipeline",
        "compare",
        "bench",
        "export",
        "perplexity",
    ];
    let with = |extra: &[&'static str]| [&top[..], extra].concat();
    let bad: Vec<String> = [
        imports_into("llm", &with(&["train"])),
        imports_into("train", &with(&["llm"])),
        imports_into("model_files", &with(&["llm", "train"])),
        imports_into("stages", &["cli", "pipeline"]),
        imports_into("pipeline", &["cli"]),
    ]
    .concat();
    assert!(bad.is_empty(), "imports against the layers: {bad:#?}");
}

#[test]
fn clap_is_used_only_under_src_cli() {
    let users: Vec<String> = sources()
        .iter()
        .filter(|(m, source)| m.first().is_none_or(|c| c != "cli") && code(source).contains("clap"))
        .map(|(m, _)| m.join("::"))
        .collect();
    assert!(users.is_empty(), "clap outside src/cli/: {users:?}");
}

#[test]
fn help_texts_write_no_defaults_of_their_own() {
    let written: Vec<String> = sources()
        .iter()
        .filter(|(m, _)| m.first().is_some_and(|c| c == "cli"))
        .flat_map(|(m, source)| {
            source
                .lines()
                .filter(|l| l.trim_start().starts_with("///") && l.contains("[default"))
                .map(move |l| format!("{}: {}", m.join("::"), l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        written.is_empty(),
        "defaults belong in the config's Default impl (cli::help_defaults shows them): \
         {written:#?}"
    );
}

#[test]
fn the_checker_finds_a_cycle_it_is_shown() {
    let mut all = BTreeMap::new();
    let m = |s: &str| s.split("::").map(str::to_string).collect::<Module>();
    all.insert(m("a"), "use crate::b::{x, c::y};\n".to_string());
    all.insert(m("b"), "// use crate::a;\nfn f() {}\n".to_string());
    all.insert(m("b::c"), "use super::super::a::z;\n".to_string());
    let found = cycles(&imports(&all));
    let want: BTreeSet<String> = ["a", "b::c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, BTreeSet::from([want]));
}
