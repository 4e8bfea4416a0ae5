//! README.md's "First steps", run as one script: every ```sh block of the
//! section, in order, in one `bash -euo pipefail`, against `otadepot serve`
//! started as a subprocess on a free port (with the suite's clamd and
//! database), in a fresh walk directory, with the variables of the walk's
//! first block (`SRC`, `OTADEPOT`, `URL`, `OTADEPOT_DATA_DIR`, `WALK`)
//! pointing at that server. It fails on a `<placeholder>` left in a block,
//! on a non-zero exit, and on an answer the README shows that the step does
//! not give.
//!
//! The README's convention, which this file enforces: in those blocks a
//! comment on a line of its own (`# …`, one or more lines) is the answer of
//! the commands above it (since the previous answer or the block's start);
//! `…` (or `...`) stands for what differs from run to run, and the rest
//! must appear in the output, in that order. A comment after a command on
//! the same line is a remark, not checked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Backend, backend, binary, fresh_database_url};

/// Printed after each answer and at the end of each block, to cut the
/// script's output into the sections the answers are checked against.
const MARK: &str = "@@otadepot-readme-mark@@";

/// Far more than the walk needs (about a minute); only a hang reaches it.
const HANG_GUARD: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Block {
    /// 1-based line of the README where the block's first line is.
    line: usize,
    lines: Vec<String>,
}

/// The ```sh blocks of `## First steps`, up to the next `## ` heading.
fn first_steps_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut in_section = false;
    let mut current: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        if current.is_none() && line.starts_with("## ") {
            if in_section {
                break;
            }
            in_section = line.trim_end() == "## First steps";
            continue;
        }
        if !in_section {
            continue;
        }
        match &mut current {
            None if line.trim_end() == "```sh" => current = Some(Block { line: i + 2, lines: Vec::new() }),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => block.lines.push(line.to_owned()),
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block in README.md's First steps");
    blocks
}

/// `<something like this>` in a shell line: a placeholder the reader would
/// have to fill in by hand.
fn placeholder(line: &str) -> Option<&str> {
    let bytes = line.as_bytes();
    for (start, _) in line.match_indices('<') {
        if !bytes.get(start + 1).is_some_and(u8::is_ascii_alphabetic) {
            continue;
        }
        let rest = &line[start + 1..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || " _.-".contains(c)));
        if let Some(end) = end
            && rest[end..].starts_with('>')
        {
            return Some(&line[start..start + end + 2]);
        }
    }
    None
}

/// What a mark in the output closes: an answer to check, or a block's end.
#[derive(Debug)]
enum Mark {
    Answer { line: usize, text: String },
    BlockEnd { line: usize },
}

/// The blocks as one script that prints [`MARK`] after each answer and
/// each block, and the marks in the order they are printed.
fn script(blocks: &[Block]) -> (String, Vec<Mark>) {
    let mut script = String::from("set -euo pipefail\n");
    let mut marks = Vec::new();
    let print_mark = format!("printf '\\n%s\\n' '{MARK}'\n");
    for block in blocks {
        let mut answer: Option<(usize, Vec<String>)> = None;
        for (i, line) in block.lines.iter().enumerate() {
            let comment = line.trim_start().strip_prefix('#').map(|c| c.strip_prefix(' ').unwrap_or(c).to_owned());
            match (comment, &mut answer) {
                (Some(text), Some((_, lines))) => lines.push(text),
                (Some(text), None) => answer = Some((block.line + i, vec![text])),
                (None, _) => {
                    if let Some((line, lines)) = answer.take() {
                        script.push_str(&print_mark);
                        marks.push(Mark::Answer { line, text: lines.join("\n") });
                    }
                }
            }
            script.push_str(line);
            script.push('\n');
        }
        if let Some((line, lines)) = answer.take() {
            script.push_str(&print_mark);
            marks.push(Mark::Answer { line, text: lines.join("\n") });
        }
        script.push_str(&print_mark);
        marks.push(Mark::BlockEnd { line: block.line });
    }
    (script, marks)
}

/// Whether `output` gives `answer`: something, and every piece of the
/// answer between `…` wildcards, in order.
fn gives(output: &str, answer: &str) -> bool {
    if output.trim().is_empty() {
        return false;
    }
    let mut rest = output;
    for piece in answer.split(['…']).flat_map(|p| p.split("...")) {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// A process (and, for a group leader, its whole process group) killed
/// when this is dropped, on every path out of the test.
struct Running {
    child: Child,
    group: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.group {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn have(tool: &str, args: &[&str]) -> bool {
    Command::new(tool).args(args).output().is_ok_and(|o| o.status.success())
}

#[test]
fn the_readme_has_first_steps_without_placeholders() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = first_steps_blocks(&readme);
    assert!(blocks.len() >= 10, "README.md's First steps: {} ```sh block(s) found", blocks.len());
    for block in &blocks {
        for (i, line) in block.lines.iter().enumerate() {
            if let Some(found) = placeholder(line) {
                panic!("README.md line {}: {found} is a placeholder; capture the value instead", block.line + i);
            }
        }
    }
    let (_, marks) = script(&blocks);
    assert!(marks.iter().filter(|m| matches!(m, Mark::Answer { .. })).count() >= 10, "answers: {marks:?}");
    // The checks themselves.
    assert!(gives("{\"a\":1,\"b\":\"x\"}\n", "{\"a\":…,\"b\":\"x\"}"));
    assert!(!gives("{\"b\":\"x\",\"a\":1}", "{\"a\":…,\"b\":\"x\"}"));
    assert!(!gives(" \n", "…"));
    assert_eq!(placeholder("curl \"<downloadUrl>\""), Some("<downloadUrl>"));
    assert_eq!(placeholder("PACKAGE=<the package id>"), Some("<the package id>"));
    assert_eq!(placeholder("wc -l < audit.csv > n"), None);
}

#[tokio::test]
async fn the_readme_first_steps_run_as_written() {
    let Some(clamd) = crate::scan::clamd() else { return };
    for (tool, args) in
        [("jq", &["--version"][..]), ("curl", &["--version"]), ("python3", &["-c", "import cryptography"])]
    {
        assert!(have(tool, args), "the README walk needs {tool} {args:?} (scripts/test installs it)");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = first_steps_blocks(&readme);
    let (script, marks) = script(&blocks);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let walk = dir.path().join("walk");
    std::fs::create_dir_all(&data).unwrap();
    // The server: its jwt-secret and keys are generated into `data`, where
    // the walk's CLI calls find them, as they would for a new user.
    let database = match backend() {
        Backend::Sqlite => None,
        Backend::Postgres => Some(fresh_database_url(&data).await),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut serve = Command::new(binary());
    serve
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OTADEPOT_DATA_DIR", &data)
        .env("OTADEPOT_LISTEN", format!("127.0.0.1:{port}"))
        .env("OTADEPOT_SCANNER__CLAMD", format!("unix:{clamd}"))
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap());
    if let Some(url) = &database {
        serve.env("OTADEPOT_DATABASE__URL", url);
    }
    let mut server = Running { child: serve.spawn().unwrap(), group: false };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "server exited: {}",
            tail(&dir.path().join("server.log"), 30)
        );
        assert!(Instant::now() < deadline, "server did not listen: {}", tail(&dir.path().join("server.log"), 30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The walk, from a directory that is not the checkout.
    let script_path = dir.path().join("first-steps.sh");
    std::fs::write(&script_path, &script).unwrap();
    let (stdout_path, stderr_path) = (dir.path().join("walk.out"), dir.path().join("walk.err"));
    let mut bash = Command::new("bash");
    bash.arg(&script_path)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("SRC", env!("CARGO_MANIFEST_DIR"))
        .env("OTADEPOT", binary())
        .env("URL", format!("http://127.0.0.1:{port}"))
        .env("OTADEPOT_DATA_DIR", &data)
        .env("WALK", &walk)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    if let Some(url) = &database {
        bash.env("OTADEPOT_DATABASE__URL", url);
    }
    std::os::unix::process::CommandExt::process_group(&mut bash, 0);
    let mut walker = Running { child: bash.spawn().unwrap(), group: true };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = walker.child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > HANG_GUARD {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(walker);
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    drop(server);

    // Where it stopped, for the messages below.
    let sections: Vec<&str> = stdout.split(&format!("\n{MARK}\n")).collect();
    let reached = sections.len() - 1;
    let at = match marks.get(reached) {
        Some(Mark::Answer { line, .. } | Mark::BlockEnd { line }) => format!("the block around README.md line {line}"),
        None => "the end".to_owned(),
    };
    let logs = || {
        format!(
            "\n--- stderr (tail) ---\n{}\n--- stdout (tail) ---\n{}\n--- server log (tail) ---\n{}",
            tail(&stderr_path, 30),
            tail(&stdout_path, 30),
            tail(&dir.path().join("server.log"), 20)
        )
    };
    let Some(status) = status else {
        panic!("the README walk still ran after {HANG_GUARD:?}, in {at}{}", logs());
    };
    assert!(status.success(), "the README walk failed ({status}) in {at}{}", logs());
    assert_eq!(reached, marks.len(), "the walk exited 0 but stopped before {at}{}", logs());
    for (mark, output) in marks.iter().zip(&sections) {
        if let Mark::Answer { line, text } = mark {
            assert!(
                gives(output, text),
                "README.md line {line} shows\n{text}\nbut the walk printed\n{output}\n(every piece between `…` must appear, in order){}",
                logs()
            );
        }
    }
    // Its files went to the walk's own directory.
    assert!(walk.join("secrets.csv").is_file(), "secrets.csv in WALK");
}

/// Where the walk's binary comes from when a user runs it: the release
/// build scripts/run makes. The test sets `OTADEPOT` to the test build.
#[test]
fn the_walk_defaults_to_what_scripts_run_starts() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let first = &first_steps_blocks(&readme)[0];
    let text = first.lines.join("\n");
    for default in ["${OTADEPOT:-$SRC/target/release/otadepot}", "${URL:-http://127.0.0.1:8080}", "${SRC:-$PWD}"] {
        assert!(text.contains(default), "the first block sets {default}:\n{text}");
    }
    let run = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/run")).unwrap();
    assert!(run.contains("cargo build --release --bin otadepot"), "scripts/run builds the release binary");
    assert!(
        run.contains(r#"bin="$target_dir/release/otadepot""#) && run.contains(r#"exec "$bin" serve"#),
        "scripts/run serves with the release binary of the target directory"
    );
}

/// The walk's ids are captured, but one copied by hand into the wrong
/// place says where ids of its kind come from (issue 12 item 6).
#[tokio::test]
async fn a_wrong_id_says_where_ids_come_from() {
    let app = crate::support::TestApp::start().await;
    let admin = app.operator("admin");
    let missing = uuid::Uuid::new_v4().to_string();
    let message = |body: serde_json::Value| body["errors"][0]["message"].as_str().unwrap_or_default().to_owned();

    let body = admin
        .gql(
            "mutation($g: ID!) { addGroupMembers(input: {group: $g, devices: [\"d1\"]}) { deviceGroup { id } } }",
            serde_json::json!({"g": missing}),
        )
        .await;
    assert_eq!(crate::support::error_code(&body), "NOT_FOUND", "{body}");
    assert_eq!(
        message(body),
        format!("device group {missing} not found (ids come from createDeviceGroup or deviceGroups)")
    );
    let body = admin
        .gql(
            "mutation($g: ID!) { addGroupMembers(input: {group: $g, devices: [\"d1\"]}) { deviceGroup { id } } }",
            serde_json::json!({"g": "<group id>"}),
        )
        .await;
    assert_eq!(crate::support::error_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(message(body).ends_with("not a device group id (ids come from createDeviceGroup or deviceGroups)"));
    let body = admin.gql("query($id: ID!) { content(id: $id) { state } }", serde_json::json!({"id": missing})).await;
    assert_eq!(crate::support::error_code(&body), "NOT_FOUND", "{body}");
    assert!(message(body).ends_with("(ids come from createContent, uploadContent or contents)"));

    // A device's own ids come from its poll.
    admin
        .ok("mutation { createDeviceModel(input: {name: \"M1\"}) { deviceModel { id } } }", serde_json::json!({}))
        .await;
    let secret = admin
        .ok("mutation { registerDevice(input: {endpointId: \"d1\", model: \"M1\"}) { secret } }", serde_json::json!({}))
        .await["registerDevice"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .client
        .post(app.url(&format!("/device/v1/updates/{missing}/status")))
        .bearer_auth(&secret)
        .json(&serde_json::json!({"status": "DOWNLOADED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("ids come from the `update` of the device's poll"),
        "{body}"
    );
}
