//! clamd, the malware scanner every upload goes through.
//!
//! Rule: fail closed. Anything but a clean verdict from a reachable clamd
//! is not clean. A clean verdict is only worth something when clamd scans
//! objects whole: with `AlertExceedsMax no` (clamd's default) an object
//! over `MaxFileSize` or `MaxScanSize` is answered `OK` after a partial
//! scan, which no reply can tell apart. So clamd must run with
//! `AlertExceedsMax yes` and `StreamMaxLength`, `MaxScanSize` and
//! `MaxFileSize` at least `http.max_upload_bytes` (libclamav scans at most
//! 2 GB, hence [`crate::config::MAX_SCANNABLE_UPLOAD`]); [`Clamd::check`]
//! (`otadepot scanner check`) proves a clamd's setup.
//!
//! What clamd has loaded ([`Clamd::info`]): its `VERSION` reply names the
//! engine and, only when an official ClamAV database (`main`, `daily`,
//! `bytecode` `.cvd`/`.cld`) is loaded, that database's version and date.
//! Its protocol has no command that tells the signature count (`STATS`
//! and `VERSIONCOMMANDS` do not either, checked against clamd 1.4.6), so
//! the count is read where clamd itself states it: the last
//! `Loaded N signatures.` or `Database correctly reloaded (N signatures)`
//! line of its `LogFile` (`scanner.clamd_log`), or unknown.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::ClamdAddress;

#[derive(Clone, Debug)]
pub struct Clamd {
    address: ClamdAddress,
    timeout: Duration,
    log: Option<PathBuf>,
}

impl Clamd {
    pub fn new(address: ClamdAddress, timeout: Duration) -> Self {
        Self { address, timeout, log: None }
    }

    /// clamd's `LogFile`, where it states how many signatures it loaded.
    pub fn with_log(mut self, log: Option<PathBuf>) -> Self {
        self.log = log;
        self
    }

    pub fn address(&self) -> &ClamdAddress {
        &self.address
    }

    /// PING then VERSION; the version string (engine and database) on success.
    pub async fn version(&self, within: Duration) -> anyhow::Result<String> {
        let reply = tokio::time::timeout(within, async {
            let pong = match &self.address {
                ClamdAddress::Unix(path) => clamav_client::tokio::ping(socket(path)).await,
                ClamdAddress::Tcp(addr) => {
                    clamav_client::tokio::ping(clamav_client::tokio::Tcp { host_address: addr.as_str() }).await
                }
            }
            .context("connecting to clamd")?;
            if pong != clamav_client::PONG {
                bail!("unexpected reply to PING: {:?}", String::from_utf8_lossy(&pong));
            }
            let version = match &self.address {
                ClamdAddress::Unix(path) => clamav_client::tokio::get_version(socket(path)).await,
                ClamdAddress::Tcp(addr) => {
                    clamav_client::tokio::get_version(clamav_client::tokio::Tcp { host_address: addr.as_str() }).await
                }
            }
            .context("asking clamd for its version")?;
            Ok(String::from_utf8_lossy(&version).trim_end_matches(['\0', '\n']).to_owned())
        })
        .await
        .context("clamd did not answer in time")??;
        Ok(reply)
    }

    /// The engine and database clamd reports, and the signature count its
    /// log states (see the module docs).
    pub async fn info(&self, within: Duration) -> anyhow::Result<ClamdInfo> {
        let version = self.version(within).await?;
        let (engine, database) = parse_version(&version);
        let signatures =
            match &self.log {
                None => Err("unknown: scanner.clamd_log is not set (clamd states its signature count only in its log)"
                    .to_owned()),
                Some(path) => {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || signatures_from_log(&path))
                        .await
                        .unwrap_or_else(|err| Err(format!("reading clamd's log: {err}")))
                }
            };
        Ok(ClamdInfo { version, engine, database, signatures })
    }

    /// One line at start: what clamd has loaded. WARN when it has test
    /// signatures only or does not answer; INFO otherwise.
    pub async fn log_startup(&self) {
        let info = match self.info(Duration::from_secs(5)).await {
            Ok(info) => info,
            Err(err) => {
                tracing::warn!(
                    clamd = %self.address,
                    error = format!("{err:#}"),
                    "clamd does not answer: uploads are not scanned, hence not promoted, until it does"
                );
                return;
            }
        };
        let signatures = info.signatures.as_ref().ok().copied();
        let signatures_note = info.signatures.as_ref().err().map(String::as_str);
        if info.test_signatures_only() {
            tracing::warn!(
                clamd = %self.address,
                version = info.version,
                signatures,
                signatures_note,
                warning = TEST_SIGNATURES_ONLY,
                "clamd has NO official ClamAV database loaded (test signatures only): REAL MALWARE WILL NOT BE DETECTED"
            );
        } else {
            tracing::info!(
                clamd = %self.address,
                version = info.version,
                database_version = info.database.as_ref().map(|d| d.version),
                signatures,
                signatures_note,
                "clamd answers"
            );
        }
    }

    pub fn scan_timeout(&self) -> Duration {
        self.timeout
    }

    /// Stream `input` to clamd (INSTREAM) and read its verdict.
    pub async fn scan<S>(&self, input: S) -> Result<Verdict, ScanError>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>>,
    {
        const CHUNK: Option<usize> = Some(256 * 1024);
        let scan = async {
            match &self.address {
                ClamdAddress::Unix(path) => clamav_client::tokio::scan_stream(input, socket(path), CHUNK).await,
                ClamdAddress::Tcp(addr) => {
                    clamav_client::tokio::scan_stream(
                        input,
                        clamav_client::tokio::Tcp { host_address: addr.as_str() },
                        CHUNK,
                    )
                    .await
                }
            }
        };
        let reply = match tokio::time::timeout(self.timeout, scan).await {
            Err(_) => return Err(ScanError::Unavailable(format!("clamd did not answer within {:?}", self.timeout))),
            Ok(Err(err)) => {
                // clamd closes the socket on a stream over its StreamMaxLength;
                // a clamd that still answers PING did exactly that.
                if self.version(Duration::from_secs(2)).await.is_ok() {
                    return Err(ScanError::OverLimit {
                        setting: "StreamMaxLength".into(),
                        detail: format!(
                            "clamd closed the stream ({err}); the object is probably larger than its StreamMaxLength"
                        ),
                    });
                }
                return Err(ScanError::Unavailable(format!("clamd unreachable: {err}")));
            }
            Ok(Ok(reply)) => reply,
        };
        parse_reply(&reply)
    }
}

/// The warning code of a clamd without an official database.
pub const TEST_SIGNATURES_ONLY: &str = "test_signatures_only";

/// What clamd has loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClamdInfo {
    /// The whole `VERSION` reply, e.g. `ClamAV 1.4.6/27450/Tue Nov  3 09:24:02 2026`.
    pub version: String,
    /// The engine part, e.g. `ClamAV 1.4.6`.
    pub engine: String,
    /// The official database clamd names, if any.
    pub database: Option<DatabaseVersion>,
    /// The count clamd last logged, or why it is unknown.
    pub signatures: Result<u64, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseVersion {
    pub version: u64,
    /// As clamd prints it (the build time of that database).
    pub date: String,
}

impl ClamdInfo {
    /// `test_signatures_only`: clamd names no database version, so it has
    /// loaded no official ClamAV database (`main`, `daily`, `bytecode`),
    /// only local unsigned signature files such as otadepot's bundled
    /// test signatures (tests/fixtures/clamav). Real malware goes unseen.
    pub fn test_signatures_only(&self) -> bool {
        self.database.is_none()
    }
}

/// `ClamAV 1.4.6` or `ClamAV 1.4.6/27450/Tue Nov  3 09:24:02 2026`: the
/// engine, and the database version and date when there are any.
pub fn parse_version(reply: &str) -> (String, Option<DatabaseVersion>) {
    let mut parts = reply.splitn(3, '/');
    let engine = parts.next().unwrap_or_default().trim().to_owned();
    let database = match (parts.next().map(|v| v.trim().parse::<u64>()), parts.next()) {
        (Some(Ok(version)), date) if version > 0 => {
            Some(DatabaseVersion { version, date: date.unwrap_or_default().trim().to_owned() })
        }
        _ => None,
    };
    (engine, database)
}

/// How far back in clamd's log the count is looked for.
const LOG_SEARCH_BYTES: u64 = 16 * 1024 * 1024;

/// The signature count of the last database load clamd logged, read
/// backwards from the end of its log in chunks (never the whole file).
fn signatures_from_log(path: &Path) -> Result<u64, String> {
    const CHUNK: u64 = 64 * 1024;
    let describe = |err: std::io::Error| format!("unknown: cannot read clamd's log {} ({err})", path.display());
    let mut file = std::fs::File::open(path).map_err(describe)?;
    let len = file.metadata().map_err(describe)?.len();
    let floor = len.saturating_sub(LOG_SEARCH_BYTES);
    let mut end = len;
    // The start of the line cut by the previous (later) chunk's start.
    let mut carry: Vec<u8> = Vec::new();
    while end > floor {
        let start = end.saturating_sub(CHUNK).max(floor);
        let mut buf = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start)).map_err(describe)?;
        file.read_exact(&mut buf).map_err(describe)?;
        buf.extend_from_slice(&carry);
        // The first line may be cut unless this chunk starts the search.
        let (head, whole) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) if start > floor => (buf[..i].to_vec(), &buf[i..]),
            _ => (Vec::new(), &buf[..]),
        };
        if let Some(count) = String::from_utf8_lossy(whole).lines().rev().find_map(signature_count) {
            return Ok(count);
        }
        carry = head;
        end = start;
    }
    Err(format!("unknown: clamd's log {} states no signature count (no \"Loaded N signatures.\" line)", path.display()))
}

/// `Loaded 3 signatures.` (start) or `Database correctly reloaded (3
/// signatures)` (RELOAD, SelfCheck), after an optional `LogTime` prefix.
fn signature_count(line: &str) -> Option<u64> {
    let number = |text: &str| text.trim().parse::<u64>().ok();
    if let Some((_, rest)) = line.split_once("Loaded ") {
        return rest.strip_suffix(" signatures.").and_then(number);
    }
    let (_, rest) = line.split_once("Database correctly reloaded (")?;
    rest.strip_suffix(" signatures)").and_then(number)
}

/// The EICAR test string (its two halves joined at run time, so that
/// neither this source nor the binary holds it whole).
fn eicar() -> bytes::Bytes {
    bytes::Bytes::from([r"X5O!P%@AP[4\PZX54(P^)7CC)7}$", "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"].concat())
}

/// `bytes` bytes: zeros, then the EICAR string as the very last bytes;
/// generated as it is sent, in chunks (never held whole).
fn test_object(bytes: u64) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    const CHUNK: usize = 256 * 1024;
    let eicar = eicar();
    let filler = bytes.saturating_sub(eicar.len() as u64);
    let zeros = bytes::Bytes::from(vec![0u8; CHUNK]);
    let filler = futures::stream::unfold(filler, move |left| {
        let zeros = zeros.clone();
        async move {
            (left > 0).then(|| {
                let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                (Ok(zeros.slice(..n)), left - n as u64)
            })
        }
    });
    futures::StreamExt::chain(filler, futures::stream::once(async move { Ok(eicar) }))
}

impl Clamd {
    /// Stream a test object of `bytes` bytes ending in the EICAR string:
    /// `Ok` (a sentence saying so) only when clamd finds EICAR, which
    /// proves it scanned the object to its end; otherwise a sentence
    /// saying what is wrong and which clamd.conf setting to change.
    pub async fn check(&self, bytes: u64) -> Result<String, String> {
        let size = |n: u64| format!("{n} bytes ({:.1} MiB)", n as f64 / 1_048_576.0);
        let raise = |setting: &str| {
            format!(
                "raise {setting} in clamd.conf to at least {bytes} (clamd reads its configuration only when it starts: restart it), or lower http.max_upload_bytes"
            )
        };
        match self.scan(test_object(bytes)).await {
            Ok(Verdict::Infected(signature)) if signature.to_ascii_uppercase().contains("EICAR") => Ok(format!(
                "clamd scanned the whole test object of {} and found the EICAR string at its end ({signature}): objects up to that size are scanned whole",
                size(bytes)
            )),
            Ok(Verdict::Infected(signature)) => Err(format!(
                "clamd flagged the test object of {} as {signature}, not as EICAR: check clamd's signature databases",
                size(bytes)
            )),
            Ok(Verdict::Clean) => Err(format!(
                "clamd answered OK for a test object of {} that ends in the EICAR string, so it did not scan it to its end: set AlertExceedsMax yes, and raise MaxScanSize, MaxFileSize and StreamMaxLength in clamd.conf to at least {bytes}, then restart clamd (it reads its configuration only when it starts); or lower http.max_upload_bytes. If it still answers OK, its signatures do not find EICAR anywhere in a file: add otadepot's tests/fixtures/clamav/otadepot.ndb to its DatabaseDirectory",
                size(bytes)
            )),
            Err(ScanError::OverLimit { setting, detail }) => Err(format!(
                "clamd did not scan the test object of {} whole ({detail}): {}",
                size(bytes),
                raise(&setting)
            )),
            Err(ScanError::Refused(reason)) => {
                Err(format!("clamd refused the test object of {}: {reason}", size(bytes)))
            }
            Err(ScanError::Unavailable(reason)) => {
                Err(format!("clamd at {:?} could not be asked ({reason}): check scanner.clamd", self.address))
            }
        }
    }
}

/// What clamd said of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// clamd is down or timed out: worth retrying.
    #[error("{0}")]
    Unavailable(String),
    /// clamd will not scan this object (errors about the object):
    /// retrying does not help. Never clean.
    #[error("{0}")]
    Refused(String),
    /// The object is over one of clamd's limits (`setting`, a clamd.conf
    /// name): not scanned whole, so never clean.
    #[error("{detail}")]
    OverLimit { setting: String, detail: String },
}

/// `stream: OK`, `stream: <signature> FOUND`, or `<message> ERROR`.
/// Fail closed: anything else is not clean. Hitting a scan limit is
/// reported (with `AlertExceedsMax`) as a `Heuristics.Limits.Exceeded`
/// signature; that is a refusal, not a virus.
pub fn parse_reply(reply: &[u8]) -> Result<Verdict, ScanError> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\0', '\n']).trim();
    if text == "stream: OK" {
        return Ok(Verdict::Clean);
    }
    if let Some(signature) = text.strip_prefix("stream: ").and_then(|t| t.strip_suffix(" FOUND")) {
        if let Some(limit) = signature.strip_prefix("Heuristics.Limits.Exceeded") {
            // `Heuristics.Limits.Exceeded.MaxFileSize` names the setting.
            let setting = limit
                .trim_start_matches('.')
                .split(['.', ' '])
                .next()
                .filter(|name| name.starts_with("Max"))
                .unwrap_or("MaxScanSize and MaxFileSize");
            return Err(ScanError::OverLimit {
                setting: setting.to_owned(),
                detail: format!("larger than clamd's scan limits ({signature})"),
            });
        }
        return Ok(Verdict::Infected(signature.to_owned()));
    }
    if text.contains("size limit exceeded") {
        return Err(ScanError::OverLimit {
            setting: "StreamMaxLength".into(),
            detail: format!("larger than clamd's StreamMaxLength ({text})"),
        });
    }
    if text.is_empty() {
        // The connection closed without a verdict: clamd died or restarted
        // mid-scan. Retried (never taken as clean).
        return Err(ScanError::Unavailable("clamd closed the connection without a verdict".into()));
    }
    Err(ScanError::Refused(format!("clamd answered {text:?}")))
}

fn socket(path: &PathBuf) -> clamav_client::tokio::Socket<&PathBuf> {
    clamav_client::tokio::Socket { socket_path: path }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_fail_closed() {
        assert_eq!(parse_reply(b"stream: OK\0"), Ok(Verdict::Clean));
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature FOUND\0"),
            Ok(Verdict::Infected("Eicar-Test-Signature".into()))
        );
        assert!(matches!(
            parse_reply(b"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0"),
            Err(ScanError::OverLimit { setting, .. }) if setting == "MaxFileSize"
        ));
        assert!(matches!(
            parse_reply(b"stream: Heuristics.Limits.Exceeded FOUND\0"),
            Err(ScanError::OverLimit { setting, .. }) if setting == "MaxScanSize and MaxFileSize"
        ));
        assert!(matches!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            Err(ScanError::OverLimit { setting, .. }) if setting == "StreamMaxLength"
        ));
        assert!(matches!(parse_reply(b""), Err(ScanError::Unavailable(_))));
        assert!(matches!(parse_reply(b"stream: OK but not really"), Err(ScanError::Refused(_))));
    }

    #[test]
    fn versions_name_the_official_database_or_none() {
        let (engine, database) = parse_version("ClamAV 1.4.6/27450/Tue Nov  3 09:24:02 2026");
        assert_eq!(engine, "ClamAV 1.4.6");
        assert_eq!(database, Some(DatabaseVersion { version: 27450, date: "Tue Nov  3 09:24:02 2026".into() }));
        assert_eq!(parse_version("ClamAV 1.4.6"), ("ClamAV 1.4.6".into(), None));
        assert_eq!(parse_version("ClamAV 1.4.6/0/x").1, None);
    }

    #[test]
    fn the_last_load_in_the_log_gives_the_count() {
        assert_eq!(signature_count("Loaded 3 signatures."), Some(3));
        assert_eq!(signature_count("Wed Dec  2 13:42:36 2026 -> Loaded 8712345 signatures."), Some(8_712_345));
        assert_eq!(signature_count("Database correctly reloaded (5 signatures)"), Some(5));
        assert_eq!(signature_count("Loaded the moon."), None);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("clamd.log");
        let filler = "SelfCheck: Database status OK.\n".repeat(10_000);
        std::fs::write(
            &log,
            format!("Loaded 3 signatures.\n{filler}Database correctly reloaded (4 signatures)\n{filler}"),
        )
        .unwrap();
        assert_eq!(signatures_from_log(&log), Ok(4));
        std::fs::write(&log, &filler).unwrap();
        assert!(signatures_from_log(&log).unwrap_err().contains("no \"Loaded N signatures.\""));
        assert!(signatures_from_log(&dir.path().join("none")).unwrap_err().contains("cannot read"));
    }
}
