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
}

fn socket(path: &PathBuf) -> clamav_client::tokio::Socket<&PathBuf> {
    clamav_client::tokio::Socket { socket_path: path }
}
