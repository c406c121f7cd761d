//! The source layout's import rules, checked on the files themselves: which files import each
//! other in a cycle (through `crate::` and `super::` paths outside comments and unit tests),
//! and which files use clap. Both are compared with the lists below, which only shrink: a new
//! cycle or a new clap user fails this test, and so does fixing one without striking it here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod util;

/// Groups of modules that import each other today (each group one strongly connected
/// component), to be emptied by the layout issue.
const KNOWN_CYCLES: &[&[&str]] = &[
    &["cli", "cli_eval", "config"],
    &["cli_dpo", "cli_rm", "cli_train"],
    &["train::sft", "train::trainer"],
];

/// Files that use clap today; the layout issue keeps clap under `src/cli/`.
const KNOWN_CLAP_USERS: &[&str] = &[
    "cli",
    "cli_dpo",
    "cli_eval",
    "cli_export",
    "cli_pipeline",
    "cli_rm",
    "cli_train",
    "export",
    "label",
    "llm::openai",
    "llm::spec",
    "main",
    "pipeline",
    "ppo_run",
    "revise",
    "train::advantage",
    "train::ppo_math",
];

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
fn import_cycles_are_only_the_known_ones() {
    let found = cycles(&imports(&sources()));
    let known: BTreeSet<BTreeSet<String>> = KNOWN_CYCLES
        .iter()
        .map(|g| g.iter().map(|s| s.to_string()).collect())
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "import cycles changed:\n  new (break them): {new:?}\n  gone or changed (update \
         KNOWN_CYCLES): {gone:?}"
    );
}

#[test]
fn clap_is_used_only_where_it_was() {
    let users: BTreeSet<String> = sources()
        .iter()
        .filter(|(_, source)| code(source).contains("clap::"))
        .map(|(m, _)| m.join("::"))
        .collect();
    let known: BTreeSet<String> = KNOWN_CLAP_USERS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        users, known,
        "files using clap changed (new ones belong under src/cli/; strike fixed ones)"
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
