//! clamd, the malware scanner every upload goes through.
//!
//! Rule: fail closed. Anything but a clean verdict from a reachable clamd
//! is not clean.

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
                    return Err(ScanError::Refused(format!(
                        "clamd closed the stream ({err}); the object is probably larger than its StreamMaxLength"
                    )));
                }
                return Err(ScanError::Unavailable(format!("clamd unreachable: {err}")));
            }
            Ok(Ok(reply)) => reply,
        };
        parse_reply(&reply)
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
    /// clamd will not scan this object (size limits, errors about the
    /// object): retrying does not help. Never clean.
    #[error("{0}")]
    Refused(String),
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
        if signature.starts_with("Heuristics.Limits.Exceeded") {
            return Err(ScanError::Refused(format!("larger than clamd's scan limits ({signature})")));
        }
        return Ok(Verdict::Infected(signature.to_owned()));
    }
    if text.contains("size limit exceeded") {
        return Err(ScanError::Refused(format!("larger than clamd's StreamMaxLength ({text})")));
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
            Err(ScanError::Refused(_))
        ));
        assert!(matches!(parse_reply(b"INSTREAM size limit exceeded. ERROR\0"), Err(ScanError::Refused(_))));
        assert!(matches!(parse_reply(b""), Err(ScanError::Refused(_))));
        assert!(matches!(parse_reply(b"stream: OK but not really"), Err(ScanError::Refused(_))));
    }
}
