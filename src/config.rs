//! Typed configuration: built-in defaults < TOML file < `OTADEPOT_*` env.
//!
//! Nested keys use `__` in the environment: `database.url` is
//! `OTADEPOT_DATABASE__URL`. Unknown keys are errors, so a typo never
//! silently falls back to a default. Every error names the key.
//!
//! Rule: secrets live in [`Secret`], which never prints its value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A string that must never reach a log line or a debug dump.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where the embedded defaults keep their files.
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub scanner: ScannerConfig,
    pub content: ContentConfig,
    pub packages: PackagesConfig,
    pub deployments: DeploymentsConfig,
    pub commands: CommandsConfig,
    pub devices: DevicesConfig,
    pub ddi: DdiConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub graphql: GraphqlConfig,
    pub jobs: JobsConfig,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://...`; empty means `<data_dir>/otadepot.db`.
    pub url: Secret,
    pub max_connections: u32,
    /// Run pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    #[serde(with = "humantime_serde_compat")]
    pub busy_timeout: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// object_store URL of the staging store (also holds `quarantine/`);
    /// empty means `<data_dir>/staging`.
    pub staging: String,
    /// object_store URL of the repository store; empty means `<data_dir>/repository`.
    pub repository: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScannerMode {
    Clamd,
    /// Only by explicit config; logged loudly, recorded as verdict SKIPPED.
    Disabled,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerConfig {
    pub mode: ScannerMode,
    /// `unix:/path/to/clamd.ctl` or `tcp://host:port`.
    pub clamd: String,
    /// clamd's `LogFile` (as its clamd.conf names it), read for the
    /// signature count clamd states there when it loads its database; its
    /// protocol does not tell it. None: the count is reported unknown.
    pub clamd_log: Option<PathBuf>,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Attempts while clamd is unreachable before SCAN_FAILED (backing off
    /// 5 s, 10 s, 20 s, ...).
    pub max_attempts: i32,
    /// Size of the test object `otadepot scanner check` streams; none means
    /// `http.max_upload_bytes` (the largest object clamd must scan whole).
    pub check_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Promotion {
    /// CLEAN content is promoted at once.
    Auto,
    /// CLEAN content waits for `promoteContent` (CONTENT_PROMOTE).
    Manual,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContentConfig {
    pub promotion: Promotion,
    /// A one-shot upload with no bytes arriving for this long is taken as
    /// abandoned (the server stopped halfway): the content is made
    /// uploadable again. Uploads in progress mark themselves alive.
    #[serde(with = "humantime_serde_compat")]
    pub upload_idle_timeout: Duration,
    /// A resumable (tus) upload with no PATCH for this long is dropped and
    /// the content made uploadable again.
    #[serde(with = "humantime_serde_compat")]
    pub tus_upload_expiry: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// How often the devices seen are written (`last_seen_at`, and ACTIVE
    /// on a first call), in one batch: at most once a minute per device.
    #[serde(with = "humantime_serde_compat")]
    pub seen_flush_interval: Duration,
    /// Writes one device may make per minute (inventory, status reports,
    /// command results, EnOS results), per process; more answer 429 with
    /// `Retry-After`. A whole update takes about 6 to 10. 0: no limit.
    pub max_writes_per_minute: u32,
    /// Enrollments one enrollment token may make per minute, per process;
    /// more answer 429 with `Retry-After`. 0: no limit.
    pub max_enrollments_per_minute: u32,
    /// Lifetime of the signed file URLs in a device's manifest (at least
    /// 2s). A poll hands out a fresh one once less than half of it is left.
    #[serde(with = "humantime_serde_compat")]
    pub download_url_ttl: Duration,
}

/// The hawkBit DDI device API (`/{tenant}/controller/v1/...`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DdiConfig {
    /// The one tenant name DDI URLs carry (compared ignoring case, as
    /// hawkBit does); any other answers 404.
    pub tenant: String,
    /// `config.polling.sleep` of a base poll while the device has nothing
    /// open (whole seconds, at most 23:59:59).
    #[serde(with = "humantime_serde_compat")]
    pub polling_sleep: Duration,
    /// The same while the device has an update in flight.
    #[serde(with = "humantime_serde_compat")]
    pub polling_sleep_active: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentsConfig {
    /// How often each active deployment is reconciled without a device
    /// report waking it (start and expiry times are kept to this).
    #[serde(with = "humantime_serde_compat")]
    pub reconcile_interval: Duration,
    /// Longest `?wait=` of a device's long poll.
    #[serde(with = "humantime_serde_compat")]
    pub max_poll_wait: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// Command names allowed besides REBOOT and RESTART_AGENT (upper case,
    /// digits and `_`, as `FACTORY_RESET`).
    pub custom_names: Vec<String>,
    /// Largest `args` (and device `result`), as JSON text.
    pub max_args_bytes: usize,
    /// How long a command waits for its device when `expiresInSeconds` is
    /// not given.
    #[serde(with = "humantime_serde_compat")]
    pub default_expiry: Duration,
    /// The longest `expiresInSeconds` accepted.
    #[serde(with = "humantime_serde_compat")]
    pub max_expiry: Duration,
    /// How often overdue commands are marked EXPIRED.
    #[serde(with = "humantime_serde_compat")]
    pub expire_interval: Duration,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesConfig {
    /// Ed25519 key that signs device manifests (PKCS#8 PEM, as `openssl
    /// genpkey -algorithm ed25519` writes it). None means one is generated
    /// into `<data_dir>/manifest-signing-key.pem`. Replicas must share it.
    pub signing_key_file: Option<PathBuf>,
    /// Further public keys (PEM) published beside the signing key, for key
    /// rotation: the next key before it signs, the previous one after.
    pub published_key_files: Vec<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for operator tokens. Empty, with no other key source,
    /// means one is generated into `<data_dir>/jwt-secret` on first start.
    pub jwt_secret: Secret,
    /// File holding the HS256 secret (alternative to `jwt_secret`).
    pub jwt_secret_file: Option<PathBuf>,
    /// Public keys of an identity provider (RS256 / ES256 / EdDSA, PEM).
    pub jwt_public_keys: Vec<PublicKeyConfig>,
    /// A JWKS document (JSON file) with the identity provider's keys.
    pub jwks_file: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    /// Claim that carries the role names (an array of strings, or one string).
    pub roles_claim: String,
    pub leeway_seconds: u64,
    /// Key of signed upload / download URLs, at least 32 bytes; empty means
    /// one is generated into `<data_dir>/url-secret`. Replicas must share it.
    pub url_secret: Secret,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// `RS256`, `ES256` or `EdDSA`.
    pub algorithm: String,
    pub path: PathBuf,
    /// Matched against the token header's `kid` when both are present.
    pub kid: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body for JSON endpoints (GraphQL, device API).
    pub max_body_bytes: usize,
    /// Largest single upload (GraphQL multipart, upload URLs, tus). With
    /// the scanner on, at most [`MAX_SCANNABLE_UPLOAD`] (what clamd can
    /// scan whole), the default.
    pub max_upload_bytes: u64,
    /// Origins allowed to call `/graphql` from a browser; none by default.
    pub cors_allowed_origins: Vec<String>,
    /// How long shutdown waits for in-flight requests before giving up.
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    /// Base URL clients reach this server at (for upload and download
    /// URLs); empty means `http://<bound address>`.
    pub public_url: String,
    /// Lifetime of the upload URL `createContent` hands out.
    #[serde(with = "humantime_serde_compat")]
    pub upload_url_ttl: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlConfig {
    pub max_depth: usize,
    pub max_complexity: usize,
    pub introspection: bool,
    /// Serve GraphiQL to a browser's GET on `/graphql`.
    pub graphiql: bool,
    /// Most operations in one batched request (a JSON array); their
    /// complexities share the one `max_complexity` budget.
    pub max_batch: usize,
    /// Most subscriptions live at once on one WebSocket.
    pub max_subscriptions_per_connection: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Run the job workers inside `serve` (the embedded default).
    pub in_process: bool,
    pub concurrency: usize,
    #[serde(with = "humantime_serde_compat")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub lease: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Text,
            database: DatabaseConfig {
                url: Secret::default(),
                max_connections: 10,
                migrate_on_start: true,
                busy_timeout: Duration::from_secs(10),
            },
            storage: StorageConfig { staging: String::new(), repository: String::new() },
            scanner: ScannerConfig {
                mode: ScannerMode::Clamd,
                clamd: "unix:/var/run/clamav/clamd.ctl".into(),
                clamd_log: None,
                timeout: Duration::from_secs(300),
                max_attempts: 6,
                check_bytes: None,
            },
            content: ContentConfig {
                promotion: Promotion::Auto,
                upload_idle_timeout: Duration::from_secs(10 * 60),
                tus_upload_expiry: Duration::from_secs(24 * 3600),
            },
            packages: PackagesConfig::default(),
            devices: DevicesConfig {
                seen_flush_interval: Duration::from_secs(10),
                max_writes_per_minute: 60,
                max_enrollments_per_minute: 60,
                download_url_ttl: Duration::from_secs(24 * 3600),
            },
            ddi: DdiConfig {
                tenant: "DEFAULT".into(),
                polling_sleep: Duration::from_secs(300),
                polling_sleep_active: Duration::from_secs(30),
            },
            deployments: DeploymentsConfig {
                reconcile_interval: Duration::from_secs(5),
                max_poll_wait: Duration::from_secs(60),
            },
            commands: CommandsConfig {
                custom_names: Vec::new(),
                max_args_bytes: 4096,
                default_expiry: Duration::from_secs(24 * 3600),
                max_expiry: Duration::from_secs(30 * 24 * 3600),
                expire_interval: Duration::from_secs(30),
            },
            auth: AuthConfig {
                jwt_secret: Secret::default(),
                jwt_secret_file: None,
                jwt_public_keys: Vec::new(),
                jwks_file: None,
                issuer: "otadepot".into(),
                audience: "otadepot".into(),
                roles_claim: "roles".into(),
                leeway_seconds: 30,
                url_secret: Secret::default(),
            },
            http: HttpConfig {
                max_body_bytes: 16 * 1024 * 1024,
                max_upload_bytes: MAX_SCANNABLE_UPLOAD,
                cors_allowed_origins: Vec::new(),
                shutdown_grace: Duration::from_secs(30),
                public_url: String::new(),
                upload_url_ttl: Duration::from_secs(24 * 3600),
            },
            graphql: GraphqlConfig {
                max_depth: 15,
                max_complexity: 2000,
                introspection: true,
                graphiql: true,
                max_batch: 10,
                max_subscriptions_per_connection: 20,
            },
            jobs: JobsConfig {
                in_process: true,
                concurrency: 4,
                poll_interval: Duration::from_secs(2),
                lease: Duration::from_secs(60),
            },
        }
    }
}

/// The largest upload clamd can scan whole: libclamav scans no file over
/// 2 GiB (it clamps `MaxFileSize` there), less a margin of 64 MiB.
pub const MAX_SCANNABLE_UPLOAD: u64 = 2 * 1024 * 1024 * 1024 - 64 * 1024 * 1024;

/// Shortest `auth.url_secret`: the HMAC key of every signed URL.
pub const MIN_URL_SECRET_BYTES: usize = 32;

/// Where the clamd daemon listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClamdAddress {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for ClamdAddress {
    /// As `scanner.clamd` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl Config {
    /// Load defaults, then the TOML file (if any), then `OTADEPOT_*` env.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::prefixed("OTADEPOT_")
                // OTADEPOT_CONFIG names the file; OTADEPOT_TEST_* belong to the test suite.
                .filter(|key| {
                    let key = key.as_str().to_ascii_lowercase();
                    key != "config" && !key.starts_with("test_")
                })
                .split("__"),
        );
        let config: Config = figment.extract().map_err(|e| {
            // figment's own text names the key and where its value came from.
            anyhow::anyhow!("invalid configuration: {e}")
        })?;
        config.resolve()
    }

    /// Fill the defaults that derive from `data_dir` and check what serde cannot.
    pub fn resolve(mut self) -> anyhow::Result<Self> {
        if self.data_dir.as_os_str().is_empty() {
            bail!("invalid configuration: data_dir: must not be empty");
        }
        if self.database.url.is_empty() {
            let path = self.data_dir.join("otadepot.db");
            self.database.url = Secret::new(format!("sqlite://{}?mode=rwc", path.display()));
        }
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!(
                "invalid configuration: database.url: must start with sqlite: or postgres:// (got scheme {:?})",
                url.split(':').next().unwrap_or_default()
            );
        }
        if self.database.max_connections == 0 {
            bail!("invalid configuration: database.max_connections: must be at least 1");
        }
        for (key, value, folder) in [
            ("storage.staging", &mut self.storage.staging, "staging"),
            ("storage.repository", &mut self.storage.repository, "repository"),
        ] {
            if value.is_empty() {
                let dir = absolute(&self.data_dir.join(folder))?;
                *value = url::Url::from_directory_path(&dir)
                    .map_err(|()| {
                        anyhow::anyhow!("invalid configuration: {key}: cannot turn {} into a URL", dir.display())
                    })?
                    .to_string();
            }
            url::Url::parse(value).with_context(|| format!("invalid configuration: {key}: not a URL: {value:?}"))?;
        }
        if self.scanner.max_attempts < 1 {
            bail!("invalid configuration: scanner.max_attempts: must be at least 1");
        }
        if self.scanner.mode == ScannerMode::Clamd {
            self.clamd_address()?;
            if self.http.max_upload_bytes > MAX_SCANNABLE_UPLOAD {
                bail!(
                    "invalid configuration: http.max_upload_bytes: {} is more than clamd can scan whole (at most {MAX_SCANNABLE_UPLOAD}: libclamav scans no file over 2 GiB); lower it, or set scanner.mode = \"disabled\"",
                    self.http.max_upload_bytes
                );
            }
        }
        if self.scanner.check_bytes.is_some_and(|n| n < 68) {
            bail!("invalid configuration: scanner.check_bytes: must be at least 68 (the EICAR string's length)");
        }
        for origin in &self.http.cors_allowed_origins {
            let parsed = url::Url::parse(origin).with_context(|| {
                format!("invalid configuration: http.cors_allowed_origins: {origin:?} is not an origin")
            })?;
            if parsed.origin().ascii_serialization() != origin.trim_end_matches('/') {
                bail!(
                    "invalid configuration: http.cors_allowed_origins: {origin:?} must be scheme://host[:port] without a path"
                );
            }
        }
        if !self.http.public_url.is_empty() {
            let parsed = url::Url::parse(&self.http.public_url).with_context(|| {
                format!("invalid configuration: http.public_url: {:?} is not a URL", self.http.public_url)
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
                bail!("invalid configuration: http.public_url: must be an http(s) URL without a query");
            }
            self.http.public_url = self.http.public_url.trim_end_matches('/').to_owned();
        }
        if self.http.max_body_bytes < 1024 {
            bail!("invalid configuration: http.max_body_bytes: must be at least 1024");
        }
        if self.graphql.max_depth == 0 || self.graphql.max_complexity == 0 {
            bail!("invalid configuration: graphql.max_depth and graphql.max_complexity must be at least 1");
        }
        if self.graphql.max_batch == 0 {
            bail!("invalid configuration: graphql.max_batch: must be at least 1");
        }
        if self.graphql.max_subscriptions_per_connection == 0 {
            bail!("invalid configuration: graphql.max_subscriptions_per_connection: must be at least 1");
        }
        if self.jobs.concurrency == 0 {
            bail!("invalid configuration: jobs.concurrency: must be at least 1");
        }
        if self.content.upload_idle_timeout < Duration::from_millis(100) {
            bail!("invalid configuration: content.upload_idle_timeout: must be at least 100ms");
        }
        if self.content.tus_upload_expiry < self.content.upload_idle_timeout {
            bail!("invalid configuration: content.tus_upload_expiry: must be at least content.upload_idle_timeout");
        }
        for name in &self.commands.custom_names {
            if !crate::domain::is_command_name(name) {
                bail!(
                    "invalid configuration: commands.custom_names: {name:?} must be {}",
                    crate::domain::COMMAND_NAME_RULE
                );
            }
        }
        if self.commands.max_args_bytes < 2 {
            bail!("invalid configuration: commands.max_args_bytes: must be at least 2");
        }
        if self.commands.default_expiry.is_zero() || self.commands.default_expiry > self.commands.max_expiry {
            bail!("invalid configuration: commands.default_expiry: must be above 0 and at most commands.max_expiry");
        }
        if self.commands.expire_interval.is_zero() {
            bail!("invalid configuration: commands.expire_interval: must be above 0");
        }
        for key in &self.auth.jwt_public_keys {
            if !matches!(key.algorithm.as_str(), "RS256" | "ES256" | "EdDSA") {
                bail!(
                    "invalid configuration: auth.jwt_public_keys.algorithm: {:?} is not one of RS256, ES256, EdDSA",
                    key.algorithm
                );
            }
        }
        if self.ddi.tenant.trim().is_empty() || self.ddi.tenant.contains('/') {
            bail!("invalid configuration: ddi.tenant: a name without '/'");
        }
        for (key, value) in
            [("ddi.polling_sleep", self.ddi.polling_sleep), ("ddi.polling_sleep_active", self.ddi.polling_sleep_active)]
        {
            if value < Duration::from_secs(1) || value >= Duration::from_secs(24 * 3600) {
                bail!("invalid configuration: {key}: from 1s to 23h59m59s (DDI writes it as HH:MM:SS)");
            }
        }
        if self.devices.download_url_ttl < Duration::from_secs(2) {
            bail!("invalid configuration: devices.download_url_ttl: must be at least 2s");
        }
        if !self.auth.url_secret.is_empty() && self.auth.url_secret.expose().len() < MIN_URL_SECRET_BYTES {
            bail!("invalid configuration: auth.url_secret: must be at least {MIN_URL_SECRET_BYTES} bytes");
        }
        if self.auth.roles_claim.is_empty() {
            bail!("invalid configuration: auth.roles_claim: must not be empty");
        }
        Ok(self)
    }

    /// Size of `otadepot scanner check`'s test object.
    pub fn scanner_check_bytes(&self) -> u64 {
        self.scanner.check_bytes.unwrap_or(self.http.max_upload_bytes)
    }

    pub fn is_sqlite(&self) -> bool {
        self.database.url.expose().starts_with("sqlite:")
    }

    pub fn clamd_address(&self) -> anyhow::Result<ClamdAddress> {
        let value = &self.scanner.clamd;
        if let Some(path) = value.strip_prefix("unix:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                bail!("invalid configuration: scanner.clamd: empty socket path");
            }
            Ok(ClamdAddress::Unix(PathBuf::from(path)))
        } else if let Some(addr) = value.strip_prefix("tcp://") {
            if !addr.contains(':') {
                bail!("invalid configuration: scanner.clamd: {value:?} needs host:port");
            }
            Ok(ClamdAddress::Tcp(addr.to_owned()))
        } else {
            bail!("invalid configuration: scanner.clamd: {value:?} must be unix:/path or tcp://host:port")
        }
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// Durations as humantime strings (`"30s"`, `"5m"`) in TOML and env.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let config = Config::default().resolve().expect("defaults are valid");
        assert!(config.database.url.expose().starts_with("sqlite://"));
        assert!(config.storage.staging.starts_with("file://"));
        assert!(config.storage.staging.ends_with("/data/staging/"));
        assert_eq!(
            config.clamd_address().expect("default clamd"),
            ClamdAddress::Unix("/var/run/clamav/clamd.ctl".into())
        );
    }

    #[test]
    fn ddi_settings_out_of_range_are_refused_naming_the_key() {
        let defaults = Config::default().resolve().expect("defaults are valid");
        assert_eq!(defaults.ddi.tenant, "DEFAULT");
        let refused = |change: fn(&mut Config)| {
            let mut config = Config::default();
            change(&mut config);
            config.resolve().expect_err("refused").to_string()
        };
        assert!(refused(|c| c.ddi.tenant = " ".into()).contains("ddi.tenant"));
        assert!(refused(|c| c.ddi.tenant = "a/b".into()).contains("ddi.tenant"));
        assert!(refused(|c| c.ddi.polling_sleep = Duration::from_millis(500)).contains("ddi.polling_sleep"));
        assert!(
            refused(|c| c.ddi.polling_sleep_active = Duration::from_secs(86_400)).contains("ddi.polling_sleep_active")
        );
    }

    #[test]
    fn secret_does_not_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
    }
}
