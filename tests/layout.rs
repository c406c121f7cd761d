//! The source layout's import rules, checked on the files themselves: no two files import
//! each other, even through others and parent ⇄ child; imports go down the README's layer
//! order (`LAYERS`), also through other files, and the siblings of a layer (`llm` and `train`;
//! the measuring subcommands) never reach each other, so the shared data and records at the
//! bottom reach neither the engine nor a stage; no stage reaches another stage (what stages
//! share lives in `STAGES_SHARED` modules, which reach none; `STAGE_IMPORTS_ALLOWED` lists the
//! imports that stay, with why, and must name real ones); clap is used only under `src/cli/`,
//! whose flags take their defaults from the configs' `Default` impls rather than from help
//! texts. Every path form is read (`use` trees with nested groups, `pub use`, `pub(crate)
//! use`, `self::`, `super::`, a child module's name, a name a `use` bound to a module, paths
//! in code and macro arguments), outside comments, literals and `#[cfg(test)]` items; each
//! rule has a test that plants a violation in a fake source tree and sees the checker report
//! it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

mod util;

type Module = Vec<String>;
type Edges = BTreeMap<Module, BTreeSet<Module>>;

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

fn sources() -> BTreeMap<Module, String> {
    let mut all = BTreeMap::new();
    modules(&util::root().join("src"), &[], &mut all);
    all
}

/// The source without comment lines and without its `#[cfg(test)] mod tests` block (the
/// last item of a file, by the house style): what the clap and help-text rules read.
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

// ---------------------------------------------------------------------------------------------
// Reading the imports

/// The source as tokens: identifiers, `::`, and single punctuation characters, with comments,
/// string/char literals and lifetimes left out.
fn tokens(source: &str) -> Vec<String> {
    let s: Vec<char> = source.chars().collect();
    let ident = is_ident;
    let (mut out, mut i) = (Vec::new(), 0);
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < s.len() && depth > 0 {
                if s[j] == '/' && s.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 1;
                } else if s[j] == '*' && s.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 1;
                }
                j += 1;
            }
            i = j;
        } else if let Some(end) = raw_string_end(&s, i) {
            i = end;
        } else if c == '"' || (c == 'b' && next == Some('"')) {
            let mut j = if c == 'b' { i + 2 } else { i + 1 };
            while j < s.len() && s[j] != '"' {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '\'' || (c == 'b' && next == Some('\'')) {
            let j = if c == 'b' { i + 1 } else { i };
            if s.get(j + 1) == Some(&'\\') {
                let mut k = j + 2;
                while k < s.len() && s[k] != '\'' {
                    k += 1;
                }
                i = k + 1;
            } else if s.get(j + 2) == Some(&'\'') {
                i = j + 3;
            } else {
                // A lifetime or label: skip the quote and its name.
                i = j + 1;
                while i < s.len() && ident(s[i]) {
                    i += 1;
                }
            }
        } else if ident(c) {
            let mut j = i;
            if c == 'r' && next == Some('#') && s.get(i + 2).is_some_and(|&c| ident(c)) {
                j += 2; // a raw identifier, `r#type`
            }
            let start = j;
            while j < s.len() && ident(s[j]) {
                j += 1;
            }
            out.push(s[start..j].iter().collect());
            i = j;
        } else if c == ':' && next == Some(':') {
            out.push("::".to_string());
            i += 2;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br"…"`) that starts at `i` ends, if one does (`i`
/// starts a token, so no identifier character precedes it).
fn raw_string_end(s: &[char], i: usize) -> Option<usize> {
    let mut j = i + usize::from(s[i] == 'b');
    if s.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = s[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if s.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < s.len() {
        if s[j] == '"'
            && s[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(s.len())
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokens without the items marked `#[cfg(test)]` (a unit-test module, a test helper); a
/// file marked `#![cfg(test)]` has none.
fn without_tests(t: Vec<String>) -> Vec<String> {
    let at = |i: usize, want: &[&str]| {
        want.iter()
            .enumerate()
            .all(|(k, w)| t.get(i + k).is_some_and(|x| x == w))
    };
    if (0..t.len()).any(|i| at(i, &["#", "!", "[", "cfg", "(", "test", ")", "]"])) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if !at(i, &["#", "[", "cfg", "(", "test", ")", "]"]) {
            out.push(t[i].clone());
            i += 1;
            continue;
        }
        // Skip the item: up to its `;` or the `}` closing its body, outside any brackets.
        i += 7;
        let mut depth = 0i32;
        while i < t.len() {
            let x = t[i].as_str();
            i += 1;
            match x {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" => depth -= 1,
                "}" => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ";" if depth == 0 => break,
                _ => {}
            }
        }
    }
    out
}

/// One path a file writes: in a `use` (with the name it binds there) or in code, and the
/// inline modules (`mod avx2 { … }`) it is written in, which `self::`/`super::` start from.
struct Written {
    path: Vec<String>,
    binds: Option<String>,
    inline: Vec<String>,
}

/// Every path of a `use` tree starting at token `i` (just after `use`), `{…}` groups at any
/// depth expanded; returns the index after the tree.
fn use_tree(t: &[String], mut i: usize, prefix: &[String], out: &mut Vec<Written>) -> usize {
    let mut path = prefix.to_vec();
    if t.get(i).is_some_and(|x| x == "::") {
        i += 1; // `use ::extern_crate`
    }
    loop {
        match t.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                while t.get(i).is_some_and(|x| x != "}") {
                    i = use_tree(t, i, &path, out);
                    if t.get(i).is_some_and(|x| x == ",") {
                        i += 1;
                    }
                }
                return i + 1;
            }
            Some("*") => {
                out.push(Written {
                    path,
                    binds: None,
                    inline: Vec::new(),
                });
                return i + 1;
            }
            Some(x) if x.chars().all(is_ident) => {
                path.push(x.to_string());
                i += 1;
                if t.get(i).is_some_and(|x| x == "::") {
                    i += 1;
                    continue;
                }
                let mut name = path.last().cloned();
                if t.get(i).is_some_and(|x| x == "as") {
                    name = t.get(i + 1).cloned().filter(|n| n != "_");
                    i += 2;
                }
                if path.last().is_some_and(|s| s == "self") {
                    path.pop();
                    if name.as_deref() == Some("self") {
                        name = path.last().cloned();
                    }
                }
                out.push(Written {
                    path,
                    binds: name,
                    inline: Vec::new(),
                });
                return i;
            }
            _ => return i,
        }
    }
}

/// Every path a file writes: each `use` item (every form: `pub use`, `pub(crate) use`,
/// nested groups, `self`, `as`, globs) and every `a::b` path in code (types, expressions,
/// macro arguments), outside comments, literals and `#[cfg(test)]` items.
fn written_paths(source: &str) -> Vec<Written> {
    let t = without_tests(tokens(source));
    let mut out = Vec::new();
    let (mut i, mut depth) = (0, 0);
    // The inline modules around token `i`, each with the brace depth of its body.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let names = |inline: &[(String, usize)]| inline.iter().map(|(n, _)| n.clone()).collect();
    while i < t.len() {
        match t[i].as_str() {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            "mod" if t.get(i + 2).is_some_and(|x| x == "{") => {
                inline.push((t[i + 1].clone(), depth + 1));
            }
            _ => {}
        }
        if t[i] == "use" {
            let first = out.len();
            i = use_tree(&t, i + 1, &[], &mut out);
            for w in &mut out[first..] {
                w.inline = names(&inline);
            }
            continue;
        }
        let starts = t[i].chars().all(is_ident)
            && t.get(i + 1).is_some_and(|x| x == "::")
            && (i == 0 || t[i - 1] != "::");
        if !starts {
            i += 1;
            continue;
        }
        let mut path = vec![t[i].clone()];
        i += 1;
        while t.get(i).is_some_and(|x| x == "::")
            && t.get(i + 1).is_some_and(|x| x.chars().all(is_ident))
        {
            path.push(t[i + 1].clone());
            i += 2;
        }
        out.push(Written {
            path,
            binds: None,
            inline: names(&inline),
        });
    }
    out
}

/// The full path a path written in module `m` stands for, if it starts inside this crate:
/// `crate::`, `self::`, `super::` (any number), a child module's name (`spec::X` in
/// `llm/mod.rs`) and a name a `use` bound to a module (`use crate::stages; stages::label::run`)
/// are followed; anything else is another crate's or a local item.
fn absolute(
    m: &[String],
    path: &[String],
    bound: &BTreeMap<String, Module>,
    all: &BTreeMap<Module, String>,
) -> Option<Module> {
    let first = path.first()?.as_str();
    Some(match first {
        "crate" => path[1..].to_vec(),
        "cai" if m == ["main"] => path[1..].to_vec(),
        "self" => [m, &path[1..]].concat(),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            [&m[..m.len().checked_sub(ups)?], &path[ups..]].concat()
        }
        _ if all.contains_key(&[m, &path[..1]].concat()) => [m, path].concat(),
        _ => [bound.get(first)?.as_slice(), &path[1..]].concat(),
    })
}

/// The longest prefix of `full` that is a module.
fn module_of(full: &[String], all: &BTreeMap<Module, String>) -> Option<Module> {
    (0..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|p| all.contains_key(p))
}

/// Each module's direct imports: the modules (other than itself and the crate root) its
/// written paths name.
fn imports(all: &BTreeMap<Module, String>) -> Edges {
    all.iter()
        .map(|(m, source)| {
            let written = written_paths(source);
            // The names `use` binds to whole modules, resolved until nothing changes (one
            // `use` may go through a name another binds).
            let mut bound = BTreeMap::new();
            loop {
                let before = bound.clone();
                for w in written.iter().filter(|w| w.inline.is_empty()) {
                    let Some(name) = &w.binds else { continue };
                    if let Some(full) = absolute(m, &w.path, &bound, all) {
                        if all.contains_key(&full) {
                            bound.insert(name.clone(), full);
                        }
                    }
                }
                if bound == before {
                    break;
                }
            }
            let deps = written
                .iter()
                .filter_map(|w| {
                    let at = [m.as_slice(), &w.inline].concat();
                    module_of(&absolute(&at, &w.path, &bound, all)?, all)
                })
                .filter(|d| d != m && !d.is_empty())
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The rules

/// Strongly connected components of more than one module (Tarjan): files that import each
/// other, directly or through others.
fn cycles(edges: &Edges) -> BTreeSet<BTreeSet<String>> {
    struct State<'a> {
        edges: &'a Edges,
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

/// Every module `from` reaches through imports, each with the chain that reaches it
/// (`a -> b -> c`), shortest first found.
/// A module for which `stop` holds is listed but not gone through (a chain is reported up to
/// its first violation, not every file beyond it).
fn reached(
    edges: &Edges,
    from: &Module,
    stop: impl Fn(&Module) -> bool,
) -> BTreeMap<Module, String> {
    let mut chain = BTreeMap::from([(from.clone(), from.join("::"))]);
    let mut queue = VecDeque::from([from.clone()]);
    while let Some(v) = queue.pop_front() {
        if &v != from && stop(&v) {
            continue;
        }
        for w in edges.get(&v).into_iter().flatten() {
            if !chain.contains_key(w) {
                let c = format!("{} -> {}", chain[&v], w.join("::"));
                chain.insert(w.clone(), c);
                queue.push_back(w.clone());
            }
        }
    }
    chain.remove(from);
    chain
}

/// The layers, top to bottom, as README's Layout table lists them ("imports go down this
/// list"): a module belongs to the group its first segment names, and the groups of one layer
/// are siblings, which never reach each other (`llm` and `train`; the measuring
/// subcommands). `*` is every top-level module not named: the shared data and utilities at the
/// bottom (chat, pairs, prompts, manifest, revisions, jsonl, constitution, sampling, hash, …),
/// which import only each other. The measuring subcommands sit above the stages, as they use
/// them (`cai bench` times the label stage, `cai pipeline` runs `compare`) and no stage uses
/// them; `test_support` (the tests' model lookup) beside `cli`, which nothing below imports.
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["cli", "test_support"],
    &["pipeline"],
    &["compare", "bench", "perplexity", "export"],
    &["stages"],
    &["llm", "train"],
    &["model_files"],
    &["*"],
];

/// A module's layer (index into `LAYERS`) and group; `None` for the crate root.
fn layer_of(m: &Module) -> Option<(usize, &str)> {
    let first = m.first()?.as_str();
    LAYERS
        .iter()
        .enumerate()
        .find_map(|(i, l)| l.contains(&first).then_some((i, first)))
        .or(Some((LAYERS.len() - 1, "*")))
}

/// Each chain that goes up `LAYERS` or into a sibling group, directly or through other files.
fn against_layers(edges: &Edges) -> Vec<String> {
    let mut bad = Vec::new();
    for m in edges.keys() {
        let Some((la, ga)) = layer_of(m) else {
            continue;
        };
        let wrong = |d: &Module| {
            layer_of(d).is_some_and(|(lb, gb)| lb < la || (lb == la && ga != gb && gb != "*"))
        };
        for (d, chain) in reached(edges, m, wrong) {
            let Some((lb, gb)) = layer_of(&d) else {
                continue;
            };
            if lb < la {
                bad.push(format!("{chain} (up: {gb} is above {ga})"));
            } else if lb == la && ga != gb && gb != "*" {
                bad.push(format!("{chain} (siblings: {ga} and {gb})"));
            }
        }
    }
    bad
}

/// The modules under `src/stages/` that are no stage: what the stages share, reaching none.
const STAGES_SHARED: &[&str] = &["records", "feedback"];

/// Direct imports of one stage by another that stay, each with why (they are taken out of the
/// graph before the rule looks, so what the imported file reaches is not excused for the
/// importer); `the_stage_allowlist_names_only_real_imports` makes the list shrink as they go.
const STAGE_IMPORTS_ALLOWED: &[(&str, &str, &str)] = &[
    (
        "stages::eval",
        "stages::sample",
        "eval composes two stages, as the pipeline does: it answers the eval prompts with \
         each policy (the sample stage's run) ...",
    ),
    (
        "stages::eval",
        "stages::label",
        "... then labels those answers with the feedback model (the label stage's run)",
    ),
];

/// The stage a module belongs to (`stages::dpo::pairs` is in `dpo`); a shared module of
/// `STAGES_SHARED` is its own.
fn stage_of(m: &Module) -> Option<&str> {
    (m.first()? == "stages")
        .then(|| m.get(1).map(String::as_str))
        .flatten()
}

/// Whether `m` is (in) a stage, not a shared module.
fn is_stage(m: &Module) -> bool {
    stage_of(m).is_some_and(|s| !STAGES_SHARED.contains(&s))
}

/// Each chain from a stage or shared stage module to another stage, directly or through other
/// files, outside the allowlist.
fn stage_to_stage(edges: &Edges, allowed: &[(&str, &str, &str)]) -> Vec<String> {
    let mut graph = edges.clone();
    for (from, to, _) in allowed {
        let split = |s: &str| s.split("::").map(str::to_string).collect::<Module>();
        if let Some(deps) = graph.get_mut(&split(from)) {
            deps.remove(&split(to));
        }
    }
    let mut bad = Vec::new();
    for m in graph.keys() {
        let Some(a) = stage_of(m) else { continue };
        let other = |d: &Module| is_stage(d) && stage_of(d) != Some(a);
        for (d, chain) in reached(&graph, m, other) {
            if other(&d) {
                bad.push(chain);
            }
        }
    }
    bad
}

/// Modules outside `src/cli/` whose code names clap.
fn clap_users(all: &BTreeMap<Module, String>) -> Vec<String> {
    all.iter()
        .filter(|(m, source)| m.first().is_none_or(|c| c != "cli") && code(source).contains("clap"))
        .map(|(m, _)| m.join("::"))
        .collect()
}

/// Help texts (doc comments under `src/cli/`) that write a default of their own.
fn written_defaults(all: &BTreeMap<Module, String>) -> Vec<String> {
    all.iter()
        .filter(|(m, _)| m.first().is_some_and(|c| c == "cli"))
        .flat_map(|(m, source)| {
            source
                .lines()
                .filter(|l| l.trim_start().starts_with("///") && l.contains("[default"))
                .map(move |l| format!("{}: {}", m.join("::"), l.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The rules on this tree

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let found = cycles(&imports(&sources()));
    assert!(found.is_empty(), "import cycles (break them): {found:#?}");
}

#[test]
fn imports_go_down_the_layers() {
    let bad = against_layers(&imports(&sources()));
    assert!(bad.is_empty(), "imports against LAYERS: {bad:#?}");
}

#[test]
fn data_and_records_import_no_engine_and_no_stage() {
    // The bottom layer (prompts, manifest, chat, pairs, revisions, …) by name: the rule of
    // `imports_go_down_the_layers` for them alone, so a planted `use crate::llm::Prompt` in
    // prompts.rs (as it was) fails here by name.
    let edges = imports(&sources());
    let above = ["llm", "train", "stages", "model_files", "pipeline", "cli"];
    let mut bad = Vec::new();
    for m in edges
        .keys()
        .filter(|m| layer_of(m).is_some_and(|(_, g)| g == "*"))
    {
        let engine = |d: &Module| d.first().is_some_and(|f| above.contains(&f.as_str()));
        for (d, chain) in reached(&edges, m, engine) {
            if engine(&d) {
                bad.push(chain);
            }
        }
    }
    assert!(
        bad.is_empty(),
        "data or records reaching the engine: {bad:#?}"
    );
}

#[test]
fn no_stage_imports_another() {
    let bad = stage_to_stage(&imports(&sources()), STAGE_IMPORTS_ALLOWED);
    assert!(
        bad.is_empty(),
        "a stage reaches another (move the shared part down): {bad:#?}"
    );
}

#[test]
fn the_stage_allowlist_names_only_real_imports() {
    let edges = imports(&sources());
    let split = |s: &str| s.split("::").map(str::to_string).collect::<Module>();
    for (from, to, _) in STAGE_IMPORTS_ALLOWED {
        assert!(
            edges
                .get(&split(from))
                .is_some_and(|d| d.contains(&split(to))),
            "{from} -> {to} is allowed but no longer imported: take it out of the list"
        );
    }
}

#[test]
fn every_top_level_module_is_placed_once() {
    let named: Vec<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    let unique: BTreeSet<&str> = named.iter().copied().collect();
    assert_eq!(unique.len(), named.len(), "a group named twice in LAYERS");
    let all = sources();
    for n in named.iter().filter(|n| **n != "*") {
        assert!(
            all.contains_key(&vec![n.to_string()]),
            "LAYERS names {n}, which is gone"
        );
    }
}

#[test]
fn clap_is_used_only_under_src_cli() {
    let users = clap_users(&sources());
    assert!(users.is_empty(), "clap outside src/cli/: {users:?}");
}

#[test]
fn help_texts_write_no_defaults_of_their_own() {
    let written = written_defaults(&sources());
    assert!(
        written.is_empty(),
        "defaults belong in the config's Default impl (cli::help_defaults shows them): \
         {written:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Each rule fails on a planted violation

/// A fake source tree: (module path, source) pairs.
fn tree(files: &[(&str, &str)]) -> BTreeMap<Module, String> {
    files
        .iter()
        .map(|(m, s)| {
            let m = m.split("::").filter(|s| !s.is_empty()).map(str::to_string);
            (m.collect(), s.to_string())
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn deps_of(all: &BTreeMap<Module, String>, m: &str) -> BTreeSet<String> {
    let m: Module = m.split("::").map(str::to_string).collect();
    imports(all)[&m].iter().map(|d| d.join("::")).collect()
}

#[test]
fn the_checker_finds_a_cycle_through_a_nested_group() {
    let all = tree(&[
        ("a", "use crate::{x, b::{y, c::{self, z}}};\n"),
        ("b", "// use crate::a;\nfn f() { let s = \"crate::a\"; }\n"),
        ("b::c", "use super::super::a::z;\n"),
        ("x", ""),
    ]);
    assert_eq!(deps_of(&all, "a"), set(&["x", "b", "b::c"]));
    assert_eq!(
        cycles(&imports(&all)),
        BTreeSet::from([set(&["a", "b::c"])])
    );
}

#[test]
fn the_checker_finds_a_parent_child_cycle() {
    // `llm/mod.rs` re-exports from its child by the child's bare name, and the child imports
    // its parent through `super::`.
    let all = tree(&[
        (
            "llm",
            "pub mod spec;\npub use spec::open_backend;\npub trait Backend {}\n",
        ),
        (
            "llm::spec",
            "use super::Backend;\npub fn open_backend() {}\n",
        ),
    ]);
    assert_eq!(
        cycles(&imports(&all)),
        BTreeSet::from([set(&["llm", "llm::spec"])])
    );
    // The same through `self::`, a `pub(crate) use` and a path in code.
    let all = tree(&[
        ("llm", "pub(crate) use self::spec::X;\n"),
        ("llm::spec", "fn f() -> crate::llm::Y { todo!() }\n"),
    ]);
    assert_eq!(
        cycles(&imports(&all)),
        BTreeSet::from([set(&["llm", "llm::spec"])])
    );
}

#[test]
fn the_checker_finds_a_cycle_through_three_files_and_bound_names() {
    // x -> y (a path in code) -> z (a path in a signature) -> x (`super::` from a child).
    let all = tree(&[
        ("x", "use crate::y::f;\n"),
        ("y", "fn g() -> crate::z::Z { todo!() }\n"),
        ("z", "mod w;\n"),
        ("z::w", ""),
    ]);
    let found = cycles(&imports(&all));
    assert!(found.is_empty(), "{found:?}");
    let mut all = all;
    all.insert(
        vec!["z".to_string()],
        "pub struct Z(super::x::X);\n".to_string(),
    );
    assert_eq!(
        cycles(&imports(&all)),
        BTreeSet::from([set(&["x", "y", "z"])])
    );
    // a -> b (a name `use` bound to a module, then a path through it) -> b::c -> a.
    let all = tree(&[
        ("a", "use crate::b as bee;\nfn f() { bee::c::g(); }\n"),
        ("b", "mod c;\n"),
        ("b::c", "fn g() { crate::a::h() }\n"),
    ]);
    assert_eq!(deps_of(&all, "a"), set(&["b", "b::c"]));
    assert_eq!(
        cycles(&imports(&all)),
        BTreeSet::from([set(&["a", "b::c"])])
    );
}

#[test]
fn the_checker_leaves_out_comments_literals_and_test_items() {
    let all = tree(&[
        (
            "a",
            "/* crate::b::x /* nested */ crate::c */\n\
             const S: &str = r#\"crate::b\"#;\n\
             const C: char = '\"'; fn f<'a>(x: &'a str) {}\n\
             #[cfg(test)]\nfn helper() { crate::b::x(); }\n\
             #[cfg(test)]\nmod tests { use crate::c; }\n\
             use crate::d::Y;\n\
             fn m() { println!(\"{}\", crate::f::g()); }\n",
        ),
        ("f", ""),
        ("b", ""),
        ("c", ""),
        ("d", ""),
        // `super::` in an inline module is the file's own module, not its parent.
        (
            "d::e",
            "mod avx2 { use super::exp; fn g() { self::h() } }\nfn exp() {}\n",
        ),
    ]);
    assert_eq!(deps_of(&all, "a"), set(&["d", "f"]));
    assert_eq!(deps_of(&all, "d::e"), set(&[]));
}

#[test]
fn the_checker_finds_an_import_up_the_layers_through_another_file() {
    // llm -> sampling (bottom) -> train: the edge sampling -> train goes up, and llm reaches
    // its sibling train through it.
    let all = tree(&[
        ("llm", "use crate::sampling::Sampler;\n"),
        ("sampling", "pub struct Sampler(crate::train::Params);\n"),
        ("train", ""),
    ]);
    let bad = against_layers(&imports(&all));
    assert_eq!(
        bad,
        [
            "llm -> sampling -> train (siblings: llm and train)",
            "sampling -> train (up: train is above *)",
        ]
    );
}

#[test]
fn the_checker_finds_data_importing_the_engine() {
    // prompts.rs (shared data, bottom) naming `llm::Prompt`.
    let all = tree(&[
        ("prompts", "use crate::llm::Prompt;\n"),
        ("llm", "pub use crate::chat::Prompt;\n"),
        ("chat", "pub struct Prompt;\n"),
    ]);
    assert_eq!(
        against_layers(&imports(&all)),
        ["prompts -> llm (up: llm is above *)"]
    );
}

#[test]
fn the_checker_finds_model_files_importing_train_and_siblings() {
    let all = tree(&[
        ("model_files::lora", "use crate::train::lora::Adapter;\n"),
        ("train::lora", ""),
        ("bench", "fn f() { crate::compare::run(); }\n"),
        ("compare", ""),
    ]);
    assert_eq!(
        against_layers(&imports(&all)),
        [
            "bench -> compare (siblings: bench and compare)",
            "model_files::lora -> train::lora (up: train is above model_files)",
        ]
    );
}

#[test]
fn the_checker_finds_a_stage_importing_another() {
    // dpo's child file reaches rm's split through the shared records module: transitive; and
    // an allowlisted direct edge is excused, but only that one.
    let all = tree(&[
        ("stages::dpo", "mod pairs;\nuse pairs::read;\n"),
        ("stages::dpo::pairs", "use super::super::records::R;\n"),
        (
            "stages::records",
            "use crate::stages::rm::split::held_out;\n",
        ),
        ("stages::rm", "pub mod split;\n"),
        ("stages::rm::split", ""),
        ("stages::eval", "use crate::stages::{label::run, sample};\n"),
        ("stages::label", ""),
        ("stages::sample", ""),
    ]);
    let edges = imports(&all);
    let bad = stage_to_stage(&edges, &[("stages::eval", "stages::label", "planted")]);
    assert_eq!(
        bad,
        [
            "stages::dpo -> stages::dpo::pairs -> stages::records -> stages::rm::split",
            "stages::dpo::pairs -> stages::records -> stages::rm::split",
            "stages::eval -> stages::sample",
            "stages::records -> stages::rm::split",
        ]
    );
}

#[test]
fn the_checker_finds_clap_and_written_defaults() {
    let all = tree(&[
        ("train", "use clap::Parser;\n"),
        (
            "cli::sft",
            "/// Learning rate [default: 1e-4]\npub lr: f64,\n",
        ),
    ]);
    assert_eq!(clap_users(&all), ["train"]);
    assert_eq!(written_defaults(&all).len(), 1);
}
