//! A compiled load generator for the device API (bench/longpoll.sh): one
//! TCP connection per simulated device, HTTP/1.1 through hyper's connection
//! API, so the client costs little next to the server it measures.
//!
//! Device secrets come from the CSV that `otadepot devices import
//! --secrets-out` writes (`endpoint_id,device_id,secret`, a header row).
//!
//! Hold long polls until an update is released, then say when each device
//! got its 200 (relative to the time in `--t0-file`, written by whoever
//! applies the package, as seconds since the epoch):
//!
//!     cargo run --release --example loadgen -- hold http://127.0.0.1:8080 secrets.csv \
//!         --wait 300 --t0-file t0 --ready-file ready
//!
//! The 304 rate of polls with nothing pending (`If-None-Match: "idle"`),
//! rotating through the devices' secrets (with `--ddi DEFAULT`, hawkBit
//! DDI base polls of each device instead, bench/ddi_poll.sh):
//!
//!     cargo run --release --example loadgen -- rate http://127.0.0.1:8080 secrets.csv \
//!         --connections 64 --seconds 15
//!
//! Status reports: each device's pending update is read with one poll,
//! then DOWNLOADING progress is posted for them in turn, as fast as the
//! server answers (bench/reports.sh):
//!
//!     cargo run --release --example loadgen -- report http://127.0.0.1:8080 secrets.csv \
//!         --connections 64 --seconds 15

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hold one long poll per device until each gets an answer.
    Hold(HoldArgs),
    /// Every device polls once, plainly (its first contact: the server
    /// activates it and caches its credential), over a few connections.
    Warm {
        base: String,
        secrets: PathBuf,
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Polls with nothing pending, as fast as the server answers.
    Rate {
        base: String,
        secrets: PathBuf,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// The path polled (the bare reference serves the same one).
        #[arg(long, default_value = "/device/v1/poll")]
        path: String,
        /// Poll hawkBit DDI's base resource of this tenant instead
        /// (`/<tenant>/controller/v1/<endpoint id>` with `TargetToken`).
        #[arg(long)]
        ddi: Option<String>,
    },
    /// DOWNLOADING progress reports on each device's pending update, as
    /// fast as the server answers.
    Report {
        base: String,
        secrets: PathBuf,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
}

#[derive(clap::Args)]
struct HoldArgs {
    /// The server, `http://host:port`.
    base: String,
    /// The secrets CSV of `otadepot devices import --secrets-out`.
    secrets: PathBuf,
    /// Skip this many devices of the file (to split a fleet between
    /// generator processes).
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Use at most this many devices.
    #[arg(long)]
    count: Option<usize>,
    /// `?wait=` of each long poll, in seconds.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// Connections opened at once while ramping up.
    #[arg(long, default_value_t = 256)]
    ramp: usize,
    /// The `If-None-Match` of each long poll: what the device has.
    #[arg(long, default_value = "\"idle\"")]
    etag: String,
    /// Created (holding the device count) once every long poll has been
    /// written to its connection.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Read after the answers: the release time (seconds since the
    /// epoch) the answer times are measured from.
    #[arg(long)]
    t0_file: Option<PathBuf>,
    /// Keep the connections open (idle keep-alive) this many seconds
    /// after the last answer, then close them and exit.
    #[arg(long, default_value_t = 0)]
    linger: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Hold(args) => {
            let secrets = read_secrets(&args.secrets, args.skip, args.count)?;
            hold(args, secrets).await
        }
        Command::Warm { base, secrets, connections } => {
            let secrets = read_secrets(&secrets, 0, None)?;
            warm(&base, Arc::new(secrets), connections.max(1)).await
        }
        Command::Rate { base, secrets, connections, seconds, path, ddi } => {
            let polls = match ddi {
                None => read_secrets(&secrets, 0, None)?
                    .into_iter()
                    .map(|secret| Poll { path: path.clone(), authorization: format!("Bearer {secret}"), etag: true })
                    .collect(),
                Some(tenant) => read_devices(&secrets)?
                    .into_iter()
                    .map(|(endpoint, secret)| Poll {
                        path: format!("/{tenant}/controller/v1/{endpoint}"),
                        authorization: format!("TargetToken {secret}"),
                        etag: false,
                    })
                    .collect(),
            };
            rate(&base, Arc::new(polls), connections.max(1), Duration::from_secs(seconds)).await
        }
        Command::Report { base, secrets, connections, seconds } => {
            let secrets = read_secrets(&secrets, 0, None)?;
            report(&base, secrets, connections.max(1), Duration::from_secs(seconds)).await
        }
    }
}

/// The secrets (last column) of the CSV's data rows `skip..skip + count`.
fn read_secrets(path: &Path, skip: usize, count: Option<usize>) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let secrets: Vec<String> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .skip(skip)
        .take(count.unwrap_or(usize::MAX))
        .map(|l| l.rsplit(',').next().unwrap_or_default().trim().to_owned())
        .collect();
    if secrets.is_empty() {
        bail!("no device secrets in {} (after skipping {skip})", path.display());
    }
    Ok(secrets)
}

/// (endpoint id, secret) of each data row of the CSV.
fn read_devices(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let devices: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let endpoint = l.split(',').next().unwrap_or_default().trim().to_owned();
            (endpoint, l.rsplit(',').next().unwrap_or_default().trim().to_owned())
        })
        .collect();
    if devices.is_empty() {
        bail!("no devices in {}", path.display());
    }
    Ok(devices)
}

/// One device's poll in `rate`.
struct Poll {
    path: String,
    authorization: String,
    /// Send `If-None-Match: "idle"` (the `/device/v1` 304 path).
    etag: bool,
}

/// `host:port` of `http://host:port[/]`.
fn authority(base: &str) -> anyhow::Result<String> {
    let rest = base.strip_prefix("http://").context("the base URL must start with http://")?;
    Ok(rest.trim_end_matches('/').to_owned())
}

/// One HTTP/1.1 connection (its driver runs on its own task).
async fn connect(authority: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(authority).await.with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true).ok();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn request(authority: &str, path: &str, secret: &str, if_none_match: Option<&str>) -> http::Request<Full<Bytes>> {
    let mut builder = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::AUTHORIZATION, format!("Bearer {secret}"));
    if let Some(tag) = if_none_match {
        builder = builder.header(http::header::IF_NONE_MATCH, tag);
    }
    builder.body(Full::new(Bytes::new())).unwrap_or_default()
}

fn epoch_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// What each connection's task measured: its latencies and the count of
/// each status.
type Measured = (Vec<f32>, std::collections::BTreeMap<u16, u64>);

/// Every task's latencies (in ms, sorted) and the statuses, summed.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Measured>>>,
) -> anyhow::Result<(Vec<f64>, std::collections::BTreeMap<u16, u64>)> {
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for task in tasks {
        let (l, s) = task.await??;
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    latencies.sort_by(f32::total_cmp);
    Ok((latencies.iter().map(|l| f64::from(*l) * 1000.0).collect(), statuses))
}

/// Percentile `p` (0..=100) of sorted `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

async fn hold(args: HoldArgs, secrets: Vec<String>) -> anyhow::Result<()> {
    let HoldArgs { base, wait, ramp, etag, ready_file, t0_file, linger, .. } = args;
    let ramp = ramp.max(1);
    let authority = Arc::new(authority(&base)?);
    let etag = Arc::new(etag);
    let path = format!("/device/v1/poll?wait={wait}");
    let total = secrets.len();
    let sent = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(ramp));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(u16, f64)>();
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    for secret in secrets {
        let (authority, path, etag, sent, permits, done_tx, release) = (
            authority.clone(),
            path.clone(),
            etag.clone(),
            sent.clone(),
            permits.clone(),
            done_tx.clone(),
            release.clone(),
        );
        tokio::spawn(async move {
            let outcome = async {
                let permit = permits.acquire_owned().await?;
                let mut sender = connect(&authority).await?;
                // hyper queues the request to the connection's task here;
                // that task writes it at once.
                let held = sender.send_request(request(&authority, &path, &secret, Some(&etag)));
                sent.fetch_add(1, Ordering::Relaxed);
                drop(permit);
                let answer = held.await?;
                let status = answer.status().as_u16();
                answer.into_body().collect().await?;
                let at = epoch_secs();
                anyhow::Ok((status, at, sender))
            }
            .await;
            match outcome {
                Ok((status, at, sender)) => {
                    let _ = done_tx.send((status, at));
                    // Idle keep-alive until told to close.
                    release.notified().await;
                    drop(sender);
                }
                Err(err) => {
                    eprintln!("device poll failed: {err:#}");
                    let _ = done_tx.send((0, epoch_secs()));
                }
            }
        });
    }
    drop(done_tx);
    // Wait until every long poll is on the wire (or has failed).
    loop {
        let n = sent.load(Ordering::Relaxed);
        if n >= total || done_rx.len() + n >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp_s = started.elapsed().as_secs_f64();
    eprintln!("holding {} long polls (ramp-up {ramp_s:.1} s)", sent.load(Ordering::Relaxed));
    if let Some(ready) = &ready_file {
        std::fs::write(ready, format!("{}\n", sent.load(Ordering::Relaxed)))
            .with_context(|| format!("writing {}", ready.display()))?;
    }
    let mut answers: Vec<(u16, f64)> = Vec::with_capacity(total);
    // The tasks keep their sender (and connection) until told to close.
    while answers.len() < total {
        let Some(answer) = done_rx.recv().await else { break };
        answers.push(answer);
    }
    let t0 = match &t0_file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .parse::<f64>()
            .with_context(|| format!("{} holds no time", file.display()))?,
        None => answers.iter().map(|(_, at)| *at).fold(f64::INFINITY, f64::min),
    };
    let mut ok: Vec<f64> = answers.iter().filter(|(s, _)| *s == 200).map(|(_, at)| at - t0).collect();
    ok.sort_by(f64::total_cmp);
    let mut other = std::collections::BTreeMap::<u16, usize>::new();
    for (status, _) in answers.iter().filter(|(s, _)| *s != 200) {
        *other.entry(*status).or_default() += 1;
    }
    println!(
        "answers devices={total} ok200={} p50={:.3} p99={:.3} last={:.3} other={other:?}",
        ok.len(),
        percentile(&ok, 50.0),
        percentile(&ok, 99.0),
        ok.last().copied().unwrap_or(f64::NAN)
    );
    if linger > 0 {
        tokio::time::sleep(Duration::from_secs(linger)).await;
    }
    release.notify_waiters();
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

async fn warm(base: &str, secrets: Arc<Vec<String>>, connections: usize) -> anyhow::Result<()> {
    let authority = Arc::new(authority(base)?);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (authority, secrets, next) = (authority.clone(), secrets.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&authority).await?;
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(secret) = secrets.get(i) else { break };
                let answer = sender.send_request(request(&authority, "/device/v1/poll", secret, None)).await?;
                failed += usize::from(!answer.status().is_success());
                answer.into_body().collect().await?;
            }
            anyhow::Ok(failed)
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += task.await??;
    }
    println!("warm devices={} failed={failed} seconds={:.1}", secrets.len(), started.elapsed().as_secs_f64());
    if failed > 0 {
        bail!("{failed} first polls were not answered 2xx");
    }
    Ok(())
}

async fn rate(base: &str, polls: Arc<Vec<Poll>>, connections: usize, run: Duration) -> anyhow::Result<()> {
    let authority = Arc::new(authority(base)?);
    let next = Arc::new(AtomicUsize::new(rand::random::<u32>() as usize));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (authority, polls, next, errors) = (authority.clone(), polls.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<f32> = Vec::new();
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            let mut sender = connect(&authority).await?;
            while Instant::now() < deadline {
                let poll = &polls[next.fetch_add(1, Ordering::Relaxed) % polls.len()];
                let start = Instant::now();
                let mut builder = http::Request::get(&poll.path)
                    .header(http::header::HOST, authority.as_str())
                    .header(http::header::AUTHORIZATION, &poll.authorization);
                if poll.etag {
                    builder = builder.header(http::header::IF_NONE_MATCH, "\"idle\"");
                }
                let request = builder.body(Full::new(Bytes::new())).unwrap_or_default();
                match sender.send_request(request).await {
                    Ok(answer) => {
                        let status = answer.status().as_u16();
                        answer.into_body().collect().await?;
                        latencies.push(start.elapsed().as_secs_f32());
                        *statuses.entry(status).or_default() += 1;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        sender = connect(&authority).await?;
                    }
                }
            }
            anyhow::Ok((latencies, statuses))
        }));
    }
    let (sorted, statuses) = gather(tasks).await?;
    println!(
        "rate requests={} rps={:.0} p50_ms={:.2} p99_ms={:.2} statuses={statuses:?} errors={}",
        sorted.len(),
        sorted.len() as f64 / run.as_secs_f64(),
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Each device's pending update id (one plain poll each, over
/// `connections` connections), then DOWNLOADING reports for the devices
/// in turn until `run` is over.
async fn report(base: &str, secrets: Vec<String>, connections: usize, run: Duration) -> anyhow::Result<()> {
    let authority = Arc::new(authority(base)?);
    let secrets = Arc::new(secrets);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (authority, secrets, next) = (authority.clone(), secrets.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&authority).await?;
            let mut found = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(secret) = secrets.get(i) else { break };
                let answer = sender.send_request(request(&authority, "/device/v1/poll", secret, None)).await?;
                let status = answer.status();
                let body = answer.into_body().collect().await?.to_bytes();
                if status != http::StatusCode::OK {
                    bail!("device {i}: its poll answered {status}, not an update");
                }
                let body: serde_json::Value = serde_json::from_slice(&body)?;
                let id = body["update"]["id"].as_str().context("an update id in the poll")?.to_owned();
                found.push((secret.clone(), id));
            }
            anyhow::Ok(found)
        }));
    }
    let mut updates = Vec::with_capacity(secrets.len());
    for task in tasks {
        updates.extend(task.await??);
    }
    let updates = Arc::new(updates);
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (authority, updates, next) = (authority.clone(), updates.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<f32> = Vec::new();
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            let mut sender = connect(&authority).await?;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let (secret, id) = &updates[n % updates.len()];
                let body = format!(r#"{{"status":"DOWNLOADING","progress":{}}}"#, 1 + (n / updates.len()) % 99);
                let request = http::Request::post(format!("/device/v1/updates/{id}/status"))
                    .header(http::header::HOST, authority.as_str())
                    .header(http::header::AUTHORIZATION, format!("Bearer {secret}"))
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                let start = Instant::now();
                let answer = sender.send_request(request).await?;
                let status = answer.status().as_u16();
                answer.into_body().collect().await?;
                latencies.push(start.elapsed().as_secs_f32());
                *statuses.entry(status).or_default() += 1;
            }
            anyhow::Ok((latencies, statuses))
        }));
    }
    let (sorted, statuses) = gather(tasks).await?;
    let ok = statuses.get(&200).copied().unwrap_or_default();
    println!(
        "report devices={} requests={} ok={ok} rps={:.0} p50_ms={:.2} p99_ms={:.2} statuses={statuses:?}",
        updates.len(),
        sorted.len(),
        ok as f64 / run.as_secs_f64(),
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
    );
    Ok(())
}
