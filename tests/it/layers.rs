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
//!   role service, which uses `auth`, not the other way round).
//!
//! A forbidden edge fails the suite, naming the file, the path and the rule.

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
