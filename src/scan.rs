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

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::ClamdAddress;

#[derive(Clone, Debug)]
pub struct Clamd {
    address: ClamdAddress,
    timeout: Duration,
}

impl Clamd {
    pub fn new(address: ClamdAddress, timeout: Duration) -> Self {
        Self { address, timeout }
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
}
