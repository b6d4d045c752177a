//! The layering rule of `lib.rs`'s map, checked on the source: every `crate::` and `super::`
//! path of a file (in `use` lines and in code) is resolved to the file it names, and
//! - a module imports only from its own layer or the ones listed before it;
//! - no two files import each other, directly or through others, across modules;
//! - the map lists exactly the crate's top-level modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers of `lib.rs`'s map, lowest first: the first word of each line of its
/// ```` ```text layers ```` block.
fn layers() -> Vec<String> {
    let lib = include_str!("lib.rs");
    let block = lib
        .split("```text layers")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("lib.rs has a ```text layers block");
    block
        .lines()
        .map(|line| line.trim_start_matches("//!").trim())
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/` but `main.rs` (the binary, which sees only the library),
/// with its module path (`["sink", "nats"]` for `src/sink/nats.rs`).
fn files() -> BTreeMap<Vec<String>, String> {
    fn walk(dir: &Path, module: &[String], out: &mut BTreeMap<Vec<String>, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                let mut inner = module.to_vec();
                inner.push(name);
                walk(&path, &inner, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut module = module.to_vec();
                if !matches!(stem, "mod" | "lib") {
                    module.push(stem.to_owned());
                }
                if module == ["main"] {
                    continue;
                }
                out.insert(module, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &[], &mut out);
    out
}

/// The code of a file without its comments (doc links name modules they do not import).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that starts with `crate::`, `super::` or `self::` in `code`, with `use` groups
/// (`use crate::{a::B, c}`) expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .any(|root| rest.starts_with(root));
        let boundary = at == 0
            || !(bytes[at - 1].is_ascii_alphanumeric()
                || bytes[at - 1] == b'_'
                || bytes[at - 1] == b':');
        if starts && boundary {
            let (tree, len) = path_tree(rest);
            out.extend(tree);
            at += len.max(1);
        } else {
            at += rest.chars().next().unwrap().len_utf8();
        }
    }
    out
}

/// The paths written at the start of `text` (`a::b::{c, d::e}`), and how many bytes they take.
fn path_tree(text: &str) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut at = 0;
    loop {
        let ident: String = text[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        at += ident.len();
        if !ident.is_empty() {
            prefix.push(ident);
        }
        if text[at..].starts_with("::{") {
            at += 3;
            let mut out = Vec::new();
            loop {
                let skipped = text[at..].len() - text[at..].trim_start().len();
                at += skipped;
                if text[at..].starts_with('}') {
                    at += 1;
                    break;
                }
                let (inner, len) = path_tree(&text[at..]);
                for path in inner {
                    let mut full = prefix.clone();
                    if path != ["self"] {
                        full.extend(path);
                    }
                    out.push(full);
                }
                at += len;
                let skipped = text[at..].len() - text[at..].trim_start().len();
                at += skipped;
                if text[at..].starts_with(',') {
                    at += 1;
                } else if text[at..].starts_with(" as ") || text[at..].starts_with("as ") {
                    // `a as b`: the alias is not a path.
                    let end = text[at..].find([',', '}']).unwrap_or(text.len() - at);
                    at += end;
                    if text[at..].starts_with(',') {
                        at += 1;
                    }
                }
            }
            return (out, at);
        }
        if text[at..].starts_with("::") && !text[at + 2..].starts_with('<') {
            at += 2;
            continue;
        }
        return (vec![prefix], at);
    }
}

/// The file a path names from `module`: its longest prefix that is a module of the crate.
fn resolve(
    module: &[String],
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut absolute: Vec<String> = Vec::new();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => rest = &rest[1..],
        Some("self") | Some("super") => {
            absolute = module.to_vec();
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "self" => {}
                    "super" => {
                        absolute.pop();
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    absolute.extend(rest.iter().cloned());
    (0..=absolute.len())
        .rev()
        .map(|len| absolute[..len].to_vec())
        .find(|prefix| modules.contains(prefix))
}

/// File → the files it imports.
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = files();
    let modules: BTreeSet<_> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(module, text)| {
            let targets = paths(&code(text))
                .iter()
                .filter_map(|path| resolve(module, path, &modules))
                .filter(|target| target != module && !target.is_empty())
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

fn top(module: &[String]) -> &str {
    module.first().map(String::as_str).unwrap_or("")
}

/// The imports that climb: from a module to one of a higher layer.
fn climbs(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>, layers: &[String]) -> Vec<String> {
    let rank = |module: &[String]| layers.iter().position(|layer| layer == top(module));
    let mut out = Vec::new();
    for (from, targets) in graph {
        for to in targets {
            if let (Some(low), Some(high)) = (rank(from), rank(to)) {
                if high > low {
                    out.push(format!("{} imports {}", from.join("::"), to.join("::")));
                }
            }
        }
    }
    out
}

/// Circles between files of different top-level modules: each strongly connected set of
/// files that spans more than one module.
fn circles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iterative enough for a few hundred files.
    struct State<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a [String], usize>,
        low: BTreeMap<&'a [String], usize>,
        stack: Vec<&'a [String]>,
        on_stack: BTreeSet<&'a [String]>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a [String]) {
        let next = state.index.len();
        state.index.insert(node, next);
        state.low.insert(node, next);
        state.stack.push(node);
        state.on_stack.insert(node);
        let graph = state.graph;
        for target in graph.get(node).into_iter().flatten() {
            let target = target.as_slice();
            if !graph.contains_key(target) {
                continue;
            }
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[target].min(state.low[node]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.index[target].min(state.low[node]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.join("::"));
                if member == node {
                    break;
                }
            }
            let tops: BTreeSet<_> = component
                .iter()
                .map(|file| file.split("::").next().unwrap().to_owned())
                .collect();
            if tops.len() > 1 {
                component.sort();
                state.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_slice()) {
            visit(&mut state, node);
        }
    }
    state.out
}

#[test]
fn the_map_lists_every_top_level_module_once() {
    let layers = layers();
    let tree: BTreeSet<String> = files()
        .keys()
        .filter(|module| !module.is_empty())
        .map(|module| top(module).to_owned())
        .filter(|top| top != "layers")
        .collect();
    let listed: BTreeSet<String> = layers.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        layers.len(),
        "a layer listed twice: {layers:?}"
    );
    assert_eq!(
        listed, tree,
        "lib.rs's layer map and the tree under src/ differ"
    );
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let climbs = climbs(&graph(), &layers());
    assert!(
        climbs.is_empty(),
        "imports that climb the layers of lib.rs's map:\n{}",
        climbs.join("\n")
    );
}

#[test]
fn no_import_circle_spans_two_modules() {
    let circles = circles(&graph());
    assert!(
        circles.is_empty(),
        "files that import each other across modules:\n{}",
        circles
            .iter()
            .map(|circle| circle.join(" ↔ "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The checker itself: an upward `use`, a grouped one and one written in code are all seen.
#[test]
fn the_checker_sees_every_way_of_naming_a_module() {
    let grouped = paths("use crate::{sink::{Record, nats}, core::secret::Secret as S};");
    assert_eq!(
        grouped,
        [
            vec!["crate", "sink", "Record"],
            vec!["crate", "sink", "nats"],
            vec!["crate", "core", "secret", "Secret"],
        ]
    );
    assert_eq!(
        paths("let x = crate::app::config::Config::default();"),
        [vec!["crate", "app", "config", "Config", "default"]]
    );
    assert_eq!(paths("use super::super::x;"), [vec!["super", "super", "x"]]);
    let modules: BTreeSet<Vec<String>> = [vec!["a".to_owned()], vec!["a".into(), "b".into()]]
        .into_iter()
        .collect();
    let here = ["a".to_owned(), "b".to_owned()];
    let up = ["super".to_owned(), "C".to_owned()];
    assert_eq!(resolve(&here, &up, &modules), Some(vec!["a".to_owned()]));

    let mut graph = BTreeMap::new();
    let (low, high) = (vec!["core".to_owned()], vec!["app".to_owned()]);
    graph.insert(low.clone(), BTreeSet::from([high.clone()]));
    graph.insert(high.clone(), BTreeSet::from([low.clone()]));
    let layers = ["core".to_owned(), "app".to_owned()];
    assert_eq!(climbs(&graph, &layers), ["core imports app"]);
    assert_eq!(circles(&graph), [vec!["app".to_owned(), "core".to_owned()]]);
}

/// The README's layout table lists the layers of `lib.rs`'s map, in its order, and every path
/// the layout section names exists.
#[test]
fn the_readme_layout_is_the_tree() {
    let section = crate::core::readme::section("## Layout");
    let listed: Vec<String> = section
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| layer"))
        .filter_map(|line| line.split('|').nth(1))
        .map(|cell| cell.trim().to_owned())
        .collect();
    assert_eq!(listed, layers(), "README's layout table vs lib.rs's map");
    let root = src().parent().unwrap().to_path_buf();
    let backticked = |text: &'static str| text.split('`').skip(1).step_by(2);
    let is_path = |word: &&str| {
        !word.contains(' ')
            && (word.ends_with(".rs") || word.ends_with('/') || word.ends_with(".md"))
    };
    // Paths from the repository's root, and in the table, files named in a row under its folder.
    let mut missing: Vec<String> = backticked(section)
        .filter(|word| {
            ["src/", "tests/", "docs/", "helm/", "bench/", "tools/"]
                .iter()
                .any(|p| word.starts_with(p))
        })
        .filter(|path| !root.join(path).exists())
        .map(str::to_owned)
        .collect();
    for row in section.lines().filter(|line| line.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').collect();
        let (Some(base), Some(what)) = (cells.get(2), cells.get(3)) else {
            continue;
        };
        let base = base.trim().trim_matches('`');
        for name in what.split('`').skip(1).step_by(2).filter(is_path) {
            if !root.join(base).join(name).exists() {
                missing.push(format!("{base}{name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the README's layout names what is not there: {missing:?}"
    );
}
