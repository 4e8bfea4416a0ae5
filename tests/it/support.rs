//! `TestApp`: starts the real server and talks to it like a client.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use otadepot::config::{Config, Secret};
use otadepot::server::Server;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::OnceCell;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

/// Which database the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("OTADEPOT_TEST_DB").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("OTADEPOT_TEST_DB must be sqlite or postgres, not {other:?}"),
    }
}

fn postgres_base_url() -> String {
    std::env::var("OTADEPOT_TEST_DATABASE_URL")
        .expect("OTADEPOT_TEST_DB=postgres needs OTADEPOT_TEST_DATABASE_URL (scripts/test sets both)")
}

/// `base` with its database name replaced.
fn with_database(base: &str, name: &str) -> String {
    let mut url = url::Url::parse(base).expect("OTADEPOT_TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A migrated template database, made once per test process; every test
/// clones it, which is much faster than migrating each time.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let admin = Database::connect(postgres_base_url()).await.expect("connect to PostgreSQL");
            // Databases left by earlier runs of this suite.
            let stale = admin
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT datname FROM pg_database WHERE datname LIKE 'otadepot\\_t\\_%' OR datname LIKE 'otadepot\\_tpl\\_%'",
                ))
                .await
                .expect("list databases");
            for row in stale {
                let name: String = row.try_get("", "datname").expect("datname");
                let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
            }
            let name = format!("otadepot_tpl_{}", std::process::id());
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("create template database");
            let db = Database::connect(with_database(&postgres_base_url(), &name))
                .await
                .expect("connect to template");
            otadepot::db::migrate_up(&db).await.expect("migrate template");
            db.close().await.expect("close template");
            admin.close().await.expect("close admin");
            name
        })
        .await
}

/// A fresh database URL for one test.
pub async fn fresh_database_url(dir: &std::path::Path) -> String {
    match backend() {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("otadepot.db").display()),
        Backend::Postgres => {
            let template = template().await;
            let name = format!("otadepot_t_{}", uuid::Uuid::new_v4().simple());
            let admin = Database::connect(postgres_base_url()).await.expect("connect to PostgreSQL");
            let mut attempts = 0;
            loop {
                match admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"")).await {
                    Ok(_) => break,
                    // Another test is cloning the template right now.
                    Err(err) if attempts < 50 && err.to_string().contains("being accessed by other users") => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(err) => panic!("cloning the template database: {err}"),
                }
            }
            admin.close().await.ok();
            with_database(&postgres_base_url(), &name)
        }
    }
}

/// The configuration a test server starts with.
pub async fn test_config(dir: &std::path::Path) -> Config {
    let mut config =
        Config { listen: "127.0.0.1:0".parse().expect("addr"), data_dir: dir.to_path_buf(), ..Config::default() };
    config.database.url = Secret::new(fresh_database_url(dir).await);
    config.database.max_connections = 5;
    config.auth.jwt_secret = Secret::new(JWT_SECRET);
    config.scanner.clamd = match std::env::var("OTADEPOT_TEST_CLAMD_SOCKET") {
        Ok(path) => format!("unix:{path}"),
        Err(_) => format!("unix:{}", dir.join("no-clamd.sock").display()),
    };
    // That clamd's log, where it states its signature count.
    config.scanner.clamd_log = std::env::var_os("OTADEPOT_TEST_CLAMD_LOG").map(PathBuf::from);
    // What the suite's clamd scans whole (its limits, scripts/test).
    config.http.max_upload_bytes =
        std::env::var("OTADEPOT_TEST_CLAMD_STREAM_MAX").ok().and_then(|v| v.parse().ok()).unwrap_or(64 * 1024 * 1024);
    config.http.shutdown_grace = Duration::from_secs(5);
    config.devices.seen_flush_interval = Duration::from_millis(50);
    config.resolve().expect("test config resolves")
}

pub struct TestApp {
    pub server: Option<Server>,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start with a tweak of the test configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path()).await;
        tweak(&mut config);
        let server = Server::start(config).await.expect("server starts");
        let base = format!("http://{}", server.addr);
        Self { server: Some(server), base, client: reqwest::Client::new(), dir }
    }

    /// Promotion without scanning (`scanner.mode = "disabled"`), for tests
    /// that need repository content but not clamd; tests/it/scan.rs covers
    /// the scanned path.
    pub async fn start_unscanned() -> Self {
        Self::start_with(|c| {
            c.scanner.mode = otadepot::config::ScannerMode::Disabled;
            c.jobs.poll_interval = Duration::from_millis(100);
        })
        .await
    }

    /// Upload `data` as a content named `name` and wait until it is
    /// PROMOTED (needs [`TestApp::start_unscanned`] or a clamd); returns its
    /// id and `{state downloadUrl}`.
    pub async fn promoted(&self, name: &str, data: &[u8]) -> (String, Value) {
        const CREATE: &str = "mutation($c: ContentInput) { createContent(content: $c) { id url } }";
        const GET: &str = "query($id: ID!, $ttl: Int) { content(id: $id) { state downloadUrl(ttlSeconds: $ttl) } }";
        let op = self.operator("package_admin");
        let form = op
            .ok(CREATE, json!({"c": {"name": name, "content_type": "x", "type": "firmware", "length": data.len()}}))
            .await["createContent"]
            .clone();
        self.client.put(form["url"].as_str().unwrap()).body(data.to_vec()).send().await.unwrap();
        let id = form["id"].as_str().unwrap().to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let content = op.ok(GET, json!({"id": id})).await["content"].clone();
            if content["state"] == "PROMOTED" {
                return (id, content);
            }
            assert!(std::time::Instant::now() < deadline, "not promoted: {content}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.server().app.db
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A token for `subject` holding `roles`.
    pub fn token_for(&self, subject: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        self.server().app.jwt.issue(subject, &roles, Duration::from_secs(600)).expect("issue token")
    }

    /// An operator with one role.
    pub fn operator(&self, role: &str) -> Operator<'_> {
        Operator { app: self, token: Some(self.token_for(&format!("{role}-user"), &[role])) }
    }

    pub fn anonymous(&self) -> Operator<'_> {
        Operator { app: self, token: None }
    }

    pub fn with_token(&self, token: &str) -> Operator<'_> {
        Operator { app: self, token: Some(token.to_owned()) }
    }

    /// Stop the server and wait for it.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.wait().await.expect("server stops cleanly");
        }
    }
}

pub struct Operator<'a> {
    pub app: &'a TestApp,
    pub token: Option<String>,
}

impl Operator<'_> {
    /// POST a GraphQL request; returns the whole JSON response.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        let mut request =
            self.app.client.post(self.app.url("/graphql")).json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("POST /graphql");
        response.json().await.expect("JSON response")
    }

    /// Like [`gql`], asserting no errors and returning `data`.
    pub async fn ok(&self, query: &str, variables: Value) -> Value {
        let body = self.gql(query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
        body["data"].clone()
    }

    /// Like [`gql`], asserting exactly one error and returning its code.
    pub async fn error_code(&self, query: &str, variables: Value) -> String {
        let body = self.gql(query, variables).await;
        error_code(&body)
    }
}

/// The `extensions.code` of the first error of a response.
pub fn error_code(body: &Value) -> String {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error with a code: {body:#}"))
        .to_owned()
}

/// Path of the built `otadepot` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_otadepot"))
}

/// Count rows of a table (to prove that nothing changed).
pub async fn count_rows(db: &DatabaseConnection, table: &str) -> i64 {
    query_i64(db, &format!("SELECT COUNT(*) AS n FROM {table}")).await
}

/// The integer column `n` of a one-row query.
pub async fn query_i64(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql.to_owned()))
        .await
        .expect("query")
        .expect("one row");
    row.try_get("", "n").expect("n")
}

/// Register devices `d00`, `d01`, ... of `model` (which must exist) and put
/// them in a new static group `group`: the group id and each device's
/// (endpoint id, secret).
pub async fn fleet_in_group(app: &TestApp, n: usize, model: &str, group: &str) -> (String, Vec<(String, String)>) {
    let admin = app.operator("admin");
    let rows: Vec<Value> = (0..n).map(|i| json!({"endpointId": format!("d{i:02}"), "model": model})).collect();
    let out = admin
        .ok("mutation($d: [RegisterDeviceInput!]!) { registerDevices(input: {devices: $d}) { devices { secret device { endpointId } } } }", json!({"d": rows}))
        .await;
    let devices: Vec<(String, String)> = out["registerDevices"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["device"]["endpointId"].as_str().unwrap().to_owned(), d["secret"].as_str().unwrap().to_owned()))
        .collect();
    let group = admin
        .ok(
            "mutation($n: String!, $m: ID!) { createDeviceGroup(input: {name: $n, model: $m}) { deviceGroup { id } } }",
            json!({"n": group, "m": model}),
        )
        .await["createDeviceGroup"]["deviceGroup"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ids: Vec<&str> = devices.iter().map(|(e, _)| e.as_str()).collect();
    admin
        .ok(
            "mutation($g: ID!, $d: [ID!]!) { addGroupMembers(input: {group: $g, devices: $d}) { deviceGroup { id } } }",
            json!({"g": group, "d": ids}),
        )
        .await;
    (group, devices)
}
