//! The scanner's limits fail closed: the upload limit is what clamd can
//! scan whole, over-limit verdicts never promote, and `otadepot scanner
//! check` proves (or disproves, naming the setting) that a clamd scans
//! objects of the largest allowed size to their end.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::scan::{PrivateClamd, clamd, fast_app, repository_file, upload};
use crate::support::binary;

const MIB: u64 = 1024 * 1024;

/// `otadepot scanner check` against the clamd at `socket`, with env `extra`.
fn check(socket: &str, extra: &[(&str, String)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(binary());
    command
        .current_dir(dir.path())
        .env_clear()
        .env("OTADEPOT_DATA_DIR", dir.path())
        .env("OTADEPOT_SCANNER__CLAMD", format!("unix:{socket}"))
        .args(["scanner", "check"]);
    for (k, v) in extra {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.success(), stdout, stderr)
}

#[tokio::test]
async fn the_upload_limit_defaults_to_what_clamd_scans_whole_and_a_larger_one_is_refused() {
    let defaults = otadepot::config::Config::default();
    assert_eq!(defaults.http.max_upload_bytes, otadepot::config::MAX_SCANNABLE_UPLOAD);
    const { assert!(otadepot::config::MAX_SCANNABLE_UPLOAD < 2 * 1024 * MIB) };
    let dir = tempfile::tempdir().unwrap();
    let start = |extra: &[(&str, &str)]| {
        let mut command = Command::new(binary());
        command.current_dir(dir.path()).env_clear().env("OTADEPOT_DATA_DIR", dir.path()).arg("serve");
        for (k, v) in extra {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let output = start(&[("OTADEPOT_HTTP__MAX_UPLOAD_BYTES", "4294967296")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("http.max_upload_bytes"), "{stderr}");
    // With the scanner disabled nothing is scanned, so the limit is free.
    let mut config = otadepot::config::Config { data_dir: dir.path().to_path_buf(), ..Default::default() };
    config.http.max_upload_bytes = 4 * 1024 * MIB;
    assert!(config.clone().resolve().is_err());
    config.scanner.mode = otadepot::config::ScannerMode::Disabled;
    assert!(config.resolve().is_ok());
}

#[tokio::test]
async fn scanner_check_passes_only_when_clamd_finds_eicar_at_the_end() {
    let Some(socket) = clamd() else { return };
    // The suite's clamd: 64M limits, AlertExceedsMax yes (scripts/test).
    let (ok, stdout, stderr) = check(&socket, &[("OTADEPOT_SCANNER__CHECK_BYTES", (8 * MIB).to_string())]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("EICAR") && stdout.contains(&(8 * MIB).to_string()), "{stdout}");
    // By default the object is as large as the largest upload allowed.
    let (ok, stdout, stderr) = check(&socket, &[("OTADEPOT_HTTP__MAX_UPLOAD_BYTES", (32 * MIB).to_string())]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&(32 * MIB).to_string()), "{stdout}");

    // Larger than that clamd's StreamMaxLength.
    let (ok, stdout, stderr) = check(&socket, &[("OTADEPOT_SCANNER__CHECK_BYTES", (65 * MIB).to_string())]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("raise StreamMaxLength"), "{stderr}");
}

#[tokio::test]
async fn scanner_check_names_the_limit_clamd_reported() {
    if clamd().is_none() {
        return;
    }
    let private = PrivateClamd::start_with("StreamMaxLength 16M\nMaxFileSize 1M\nMaxScanSize 8M\n").await;
    let (ok, stdout, stderr) = check(&private.socket(), &[("OTADEPOT_SCANNER__CHECK_BYTES", (3 * MIB).to_string())]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("Heuristics.Limits.Exceeded"), "{stderr}");
    assert!(stderr.contains("raise MaxFileSize"), "{stderr}");
}

#[tokio::test]
async fn scanner_check_fails_on_a_clean_verdict_of_a_partial_scan() {
    if clamd().is_none() {
        return;
    }
    // clamd's defaults: files over MaxFileSize are skipped and answered OK.
    let private = PrivateClamd::start_configured(false, "StreamMaxLength 16M\nMaxFileSize 1M\nMaxScanSize 1M\n").await;
    let (ok, stdout, stderr) = check(&private.socket(), &[("OTADEPOT_SCANNER__CHECK_BYTES", (3 * MIB).to_string())]);
    assert!(!ok, "a clean verdict must not pass: {stdout}");
    assert!(stderr.contains("AlertExceedsMax yes") && stderr.contains("MaxFileSize"), "{stderr}");
}

#[tokio::test]
async fn an_object_over_clamds_file_size_limit_is_scan_failed_never_clean() {
    if clamd().is_none() {
        return;
    }
    let private = PrivateClamd::start_with("StreamMaxLength 16M\nMaxFileSize 1M\nMaxScanSize 8M\n").await;
    let socket = private.socket();
    let app = fast_app(|c| c.scanner.clamd = format!("unix:{socket}")).await;
    let data: Vec<u8> = (0..3 * MIB as u32).map(|i| (i % 251) as u8).collect();
    let (_, content) = upload(&app, &data).await;
    assert_eq!(content["state"], "SCAN_FAILED", "{content}");
    assert_eq!(content["scanVerdict"], "ERROR");
    let reason = content["scanError"].as_str().unwrap();
    assert!(reason.contains("Heuristics.Limits.Exceeded"), "{reason}");
    assert!(!repository_file(&app, &hex::encode(Sha256::digest(&data))).exists());
}

/// Chunk `i` of the large test object: 1 MiB of a pattern that differs
/// from chunk to chunk (generated as it is sent, never held whole).
fn large_chunk(i: u64) -> bytes::Bytes {
    (0..MIB).map(|j| ((j * 7 + i * 13) % 251) as u8).collect::<Vec<u8>>().into()
}

#[tokio::test]
async fn thirty_mib_are_promoted_under_the_clamd_configuration_of_scripts_run() {
    // A second clamd that scripts/test starts from run_clamd_conf in
    // scripts/lib.sh, the function scripts/run writes its clamd.conf with.
    let socket = match std::env::var("OTADEPOT_TEST_RUN_CLAMD_SOCKET") {
        Ok(socket) => socket,
        Err(_) if clamd().is_none() => return,
        Err(_) => panic!("scripts/test sets OTADEPOT_TEST_RUN_CLAMD_SOCKET (scripts/run's clamd configuration)"),
    };
    const CHUNKS: u64 = 30;
    let app = fast_app(|c| {
        c.scanner.clamd = format!("unix:{socket}");
        // scripts/run serves with the default upload limit.
        c.http.max_upload_bytes = otadepot::config::Config::default().http.max_upload_bytes;
    })
    .await;
    let op = app.operator("package_admin");
    let form = op
        .ok(
            "mutation($c: ContentInput) { createContent(content: $c) { id url } }",
            json!({"c": {"name": "big.bin", "content_type": "application/octet-stream", "type": "firmware", "length": CHUNKS * MIB}}),
        )
        .await["createContent"]
        .clone();
    let body = futures::stream::iter((0..CHUNKS).map(|i| Ok::<_, std::io::Error>(large_chunk(i))));
    let response = app
        .client
        .put(form["url"].as_str().unwrap())
        .header(reqwest::header::CONTENT_LENGTH, CHUNKS * MIB)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED, "{}", response.text().await.unwrap());
    let mut sha = Sha256::new();
    for i in 0..CHUNKS {
        sha.update(large_chunk(i));
    }
    let sha = hex::encode(sha.finalize());

    let id = form["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let content = loop {
        let content = op
            .ok("query($id: ID!) { content(id: $id) { state scanVerdict scanError sha256 length } }", json!({"id": id}))
            .await["content"]
            .clone();
        if ["PROMOTED", "QUARANTINED", "SCAN_FAILED"].contains(&content["state"].as_str().unwrap()) {
            break content;
        }
        assert!(Instant::now() < deadline, "content stuck in {content}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(content["state"], "PROMOTED", "{content}");
    assert_eq!(content["scanVerdict"], "CLEAN", "{content}");
    assert_eq!(content["sha256"], sha);
    assert_eq!(std::fs::metadata(repository_file(&app, &sha)).unwrap().len(), CHUNKS * MIB);
}
