//! The crate's layering, checked over the source: every `crate::` path, in
//! `use` lines and inline, grouped (`use crate::{a, b::c}`) or not. The
//! rules (docs/architecture.md, "Layers"):
//!
//! - only `server`, `cli`, `main` and `lib` and the modules under
//!   `graphql/` and `http/` name `crate::graphql` or `crate::http`: the
//!   services, the jobs, auth and config know nothing of a transport;
//! - `config` and `domain` name no service, no `app`, no `auth`; `domain`
//!   names nothing of the crate at all;
//! - `auth` names no service and no `app` (operator sign-in lives in the
//!   role service, which uses `auth`, not the other way round);
//! - no import loops among the modules of a transport or of the services
//!   (below).
//!
//! A forbidden edge fails the suite, naming the file, the path and the rule.
//!
//! And no loops: among the modules of `service/`, of `graphql/` and of
//! `http/` (a file or a directory is one module: `service::content` is
//! everything under `src/service/content/`), the names they use of each
//! other (`crate::` paths, and `super::` paths resolved) form no cycle. A
//! loop fails the suite naming it (`service::a → service::b →
//! service::a`) and the paths that make each step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// The module path of a source file: `src/service/role.rs` → `service::role`.
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.strip_suffix(".rs").expect("a .rs file");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts.join("::")
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text with comments, string and char literals blanked out (so a
/// `crate::` in a doc comment or a message is not an edge).
fn code_only(text: &str) -> String {
    let bytes: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < bytes.len() && bytes[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < bytes.len() {
                if bytes[i] == '/' && bytes.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if bytes[i] == '*' && bytes.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&bytes, i) {
            // Raw string: r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while bytes.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if bytes.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= bytes.len() {
                    break;
                }
                if bytes[j] == '"' && (0..hashes).all(|k| bytes.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                if bytes[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && bytes.get(i + 2) == Some(&'\'') {
            // 'x'
            out.push_str("' '");
            i += 3;
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\u{…}'
            let mut j = i + 2;
            while j < bytes.len() && bytes[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Every path that follows `crate::` in `code`, groups expanded:
/// `crate::{app::App, service::{a, b}}` → `app::App`, `service::a`, `service::b`.
fn crate_paths(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let needle: Vec<char> = "crate::".chars().collect();
    let mut i = 0;
    while i + needle.len() <= chars.len() {
        if chars[i..i + needle.len()] == needle[..] && !prev_is_ident(&chars, i) && !(i >= 2 && chars[i - 1] == ':') {
            let (paths, end) = parse_tail(&chars, i + needle.len());
            out.extend(paths);
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Parse a path tail at `i` (`a::b::c`, `a::{…}`, `{…}`); the paths and
/// where parsing stopped.
fn parse_tail(chars: &[char], mut i: usize) -> (Vec<String>, usize) {
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if chars.get(i) == Some(&'{') {
        i += 1;
        let mut paths = Vec::new();
        loop {
            skip_ws(&mut i);
            match chars.get(i) {
                None => return (paths, i),
                Some('}') => return (paths, i + 1),
                Some(',') => i += 1,
                Some(_) => {
                    let (inner, end) = parse_tail(chars, i);
                    paths.extend(inner);
                    if end == i {
                        i += 1;
                    } else {
                        i = end;
                    }
                }
            }
        }
    }
    let start = i;
    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
        i += 1;
    }
    if i == start {
        return (Vec::new(), i);
    }
    let head: String = chars[start..i].iter().collect();
    if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
        let (tails, end) = parse_tail(chars, i + 2);
        if tails.is_empty() {
            // `crate::a::*` or a turbofish: the head alone.
            return (vec![head], end.max(i + 2));
        }
        return (tails.into_iter().map(|t| format!("{head}::{t}")).collect(), end);
    }
    (vec![head], i)
}

/// Why `module` may not name `path`, if it may not.
fn forbidden(module: &str, path: &str) -> Option<&'static str> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let (from, to) = (top(module), top(path));
    let transport = matches!(to.as_str(), "graphql" | "http");
    let wires_transport = matches!(from.as_str(), "graphql" | "http" | "server" | "cli" | "main" | "lib");
    if transport && !wires_transport {
        return Some("only graphql/, http/, server, cli and main know the transports");
    }
    if from == "domain" {
        return Some("domain names nothing of the crate");
    }
    if from == "config" && matches!(to.as_str(), "service" | "app" | "auth" | "jobs") {
        return Some("config names no service, app, auth or jobs");
    }
    if from == "auth" && matches!(to.as_str(), "service" | "app") {
        return Some("auth names no service and no app");
    }
    None
}

#[test]
fn no_module_reaches_across_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    let mut found: Vec<((String, String), String)> = Vec::new();
    for file in &files {
        let module = module_of(&root, file);
        let code = code_only(&std::fs::read_to_string(file).expect("read source"));
        let rel = file.strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap().display().to_string();
        for path in crate_paths(&code) {
            if let Some(why) = forbidden(&module, &path) {
                let edge = (rel.clone(), path.clone());
                if !found.iter().any(|(e, _)| *e == edge) {
                    found.push((edge, format!("{rel} names crate::{path}: {why}")));
                }
            }
        }
    }
    let found: Vec<String> = found.into_iter().map(|(_, reason)| format!("  {reason}")).collect();
    assert!(found.is_empty(), "forbidden edges (docs/architecture.md, Layers):\n{}", found.join("\n"));
}

#[test]
fn the_path_reader_sees_grouped_inline_and_hidden_paths() {
    let code = code_only(
        r#"use crate::{app::App, service::{role, device::{self, Ctx}}};
        // crate::http::in_a_comment
        let s = "crate::graphql::in_a_string";
        let x = crate::service::command::is_command_name(&y);
        use crate::jobs::*;
        fn f(a: &crate::config::Config) {}"#,
    );
    let mut paths = crate_paths(&code);
    paths.sort();
    assert_eq!(
        paths,
        [
            "app::App",
            "config::Config",
            "jobs",
            "service::command::is_command_name",
            "service::device::Ctx",
            "service::device::self",
            "service::role",
        ]
    );
    assert_eq!(module_of(Path::new("src"), Path::new("src/service/role.rs")), "service::role");
    assert_eq!(module_of(Path::new("src"), Path::new("src/auth/mod.rs")), "auth");
    assert_eq!(module_of(Path::new("src"), Path::new("src/lib.rs")), "lib");
    assert!(forbidden("config", "service::command::is_command_name").is_some());
    assert!(forbidden("http::device", "service::device").is_none());
    assert!(forbidden("service::content", "http::uploads").is_some());
}

/// Every `super::` path in `code` (of the file whose module is `module`),
/// resolved to a path from the crate root: in `src/service/tus.rs`,
/// `super::content::find` is `service::content::find`. A `super` inside an
/// inline `mod … { }` (a test module) climbs out of that first.
fn super_paths(code: &str, module: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let inline_mods = inline_mod_ranges(&chars);
    let segments: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let needle: Vec<char> = "super::".chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + needle.len() <= chars.len() {
        if chars[i..i + needle.len()] != needle[..] || prev_is_ident(&chars, i) || (i >= 2 && chars[i - 1] == ':') {
            i += 1;
            continue;
        }
        let start = i;
        let mut supers = 0;
        while chars[i..].starts_with(&needle) {
            supers += 1;
            i += needle.len();
        }
        let depth = inline_mods.iter().filter(|(from, to)| *from < start && start < *to).count();
        let up = supers - supers.min(depth);
        let (tails, end) = parse_tail(&chars, i);
        i = end.max(i + 1);
        if up > segments.len() {
            continue;
        }
        let base = segments[..segments.len() - up].join("::");
        for tail in tails.into_iter().filter(|t| t != "super") {
            out.push(if base.is_empty() { tail } else { format!("{base}::{tail}") });
        }
    }
    out
}

/// Where the inline modules of a file are (`mod tests { … }`): the
/// positions of their braces.
fn inline_mod_ranges(chars: &[char]) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let needle: Vec<char> = "mod ".chars().collect();
    for i in 0..chars.len().saturating_sub(needle.len()) {
        if chars[i..i + needle.len()] != needle[..] || prev_is_ident(chars, i) {
            continue;
        }
        let mut j = i + needle.len();
        while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == ' ') {
            j += 1;
        }
        if chars.get(j) != Some(&'{') {
            continue;
        }
        let open = j;
        let mut depth = 0;
        while j < chars.len() {
            match chars[j] {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        ranges.push((open, j));
    }
    ranges
}

/// The modules of `group` (`service`): each `.rs` file and each directory
/// under `src/service`, as `service::content`.
fn group_modules(root: &Path, group: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(root.join(group)).expect("read the group's directory") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().expect("a name").to_string_lossy().into_owned();
        if path.is_dir() || (path.extension().is_some_and(|e| e == "rs") && name != "mod") {
            modules.insert(format!("{group}::{name}"));
        }
    }
    modules
}

/// The module of `modules` that `path` lies in (`service::content::find`
/// → `service::content`); None for anything else, the group's own items
/// (`service::WriteTx`, in `service/mod.rs`) included.
fn module_in(modules: &BTreeSet<String>, path: &str) -> Option<String> {
    let mut parts = path.split("::");
    let first = format!("{}::{}", parts.next()?, parts.next()?);
    modules.contains(&first).then_some(first)
}

/// Which module of a group names which, and where: (from, to) → the
/// files and paths that make the edge.
type Edges = BTreeMap<(String, String), BTreeSet<String>>;

fn group_edges(root: &Path, files: &[PathBuf], group: &str) -> Edges {
    let modules = group_modules(root, group);
    let mut edges = Edges::new();
    for file in files {
        let module = module_of(root, file);
        let Some(from) = module_in(&modules, &module) else { continue };
        let code = code_only(&std::fs::read_to_string(file).expect("read source"));
        let rel = file.strip_prefix(root.parent().expect("the crate")).expect("under the crate").display().to_string();
        let named = crate_paths(&code).into_iter().map(|p| (p.clone(), format!("crate::{p}")));
        let supers = super_paths(&code, &module).into_iter().map(|p| (p, String::new()));
        for (path, written) in named.chain(supers) {
            if let Some(to) = module_in(&modules, &path)
                && to != from
            {
                let shown = if written.starts_with("crate::") { written } else { format!("super → {path}") };
                edges.entry((from.clone(), to)).or_default().insert(format!("{rel}: {shown}"));
            }
        }
    }
    edges
}

/// One loop through each set of modules that reach each other (the
/// shortest from the set's first module: `[a, b, c, a]`), and the set.
fn loops(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<(Vec<String>, BTreeSet<String>)> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(node) = todo.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = edges.keys().map(|n| (n, reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for (node, from_node) in &reaches {
        if done.contains(*node) || !from_node.contains(*node) {
            continue;
        }
        let scc: BTreeSet<&String> =
            from_node.iter().filter(|other| reaches.get(other).is_some_and(|r| r.contains(*node))).collect();
        done.extend(scc.iter().map(|n| (*n).clone()));
        // The shortest way from `node` back to itself, within its set.
        let mut previous: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = VecDeque::from([*node]);
        'search: while let Some(at) = queue.pop_front() {
            for next in edges.get(at).into_iter().flatten() {
                if !scc.contains(next) || previous.contains_key(next) {
                    continue;
                }
                previous.insert(next, at);
                if next == *node {
                    break 'search;
                }
                queue.push_back(next);
            }
        }
        let mut cycle = vec![(*node).clone()];
        let mut at = previous[*node];
        while at != *node {
            cycle.push(at.clone());
            at = previous[at];
        }
        cycle.push((*node).clone());
        cycle.reverse();
        found.push((cycle, scc.into_iter().cloned().collect()));
    }
    found
}

#[test]
fn the_modules_of_service_graphql_and_http_import_each_other_in_no_loop() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    let mut found = Vec::new();
    for group in ["service", "graphql", "http"] {
        let edges = group_edges(&root, &files, group);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges.keys() {
            graph.entry(from.clone()).or_default().insert(to.clone());
        }
        for (cycle, set) in loops(&graph) {
            let mut text = format!("  {}", cycle.join(" → "));
            if set.len() + 1 > cycle.len() {
                let set: Vec<&str> = set.iter().map(String::as_str).collect();
                text.push_str(&format!("\n    (one loop of several: {} all reach each other)", set.join(", ")));
            }
            for step in cycle.windows(2) {
                let why = &edges[&(step[0].clone(), step[1].clone())];
                let why: Vec<&str> = why.iter().map(String::as_str).take(3).collect();
                text.push_str(&format!("\n    {} → {}: {}", step[0], step[1], why.join("; ")));
            }
            found.push(text);
        }
    }
    assert!(found.is_empty(), "import loops (docs/architecture.md, Layers):\n{}", found.join("\n"));
}

#[test]
fn the_loop_finder_finds_a_loop_and_only_a_loop() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph.entry((*from).to_owned()).or_default().insert((*to).to_owned());
        }
        graph
    };
    let cycles = |g: &BTreeMap<String, BTreeSet<String>>| loops(g).into_iter().map(|(c, _)| c).collect::<Vec<_>>();
    let dag = graph(&[("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")]);
    assert!(cycles(&dag).is_empty());
    let looped = graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("x", "y"), ("y", "x")]);
    assert_eq!(cycles(&looped), [vec!["a", "b", "c", "a"], vec!["x", "y", "x"]]);
    // The shortest way round: a → c → a, not a → b → c → a.
    let knot = graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("a", "c")]);
    assert_eq!(cycles(&knot), [vec!["a", "c", "a"]]);
    assert_eq!(loops(&knot)[0].1, ["a", "b", "c"].map(String::from).into());

    let code = code_only(
        "use super::content::{find, ContentState};\nfn f() { super::super::app::x(); }\n\
         mod tests { use super::helper; }",
    );
    let mut paths = super_paths(&code, "service::tus");
    paths.sort();
    assert_eq!(paths, ["app::x", "service::content::ContentState", "service::content::find", "service::tus::helper"]);
    assert_eq!(super_paths("use super::WriteTx;", "service::content"), ["service::WriteTx"]);
    assert_eq!(super_paths("use super::find;", "service::content::upload"), ["service::content::find"]);
    let modules: BTreeSet<String> = ["service::content".to_owned()].into();
    assert_eq!(module_in(&modules, "service::content::find").as_deref(), Some("service::content"));
    assert_eq!(module_in(&modules, "service::WriteTx"), None);
}
