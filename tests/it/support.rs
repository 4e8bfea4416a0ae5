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

    /// Wait until every job that was due when this was called has run (a
    /// job rescheduled for later, like a deployment's next reconcile pass,
    /// counts as run): what a test waits for instead of sleeping.
    pub async fn drain_jobs(&self) {
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        let due = chrono::Utc::now();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let pending = entity::job::Entity::find()
                .filter(entity::job::Column::State.is_in([otadepot::jobs::QUEUED, otadepot::jobs::RUNNING]))
                .filter(entity::job::Column::RunAt.lte(due))
                .count(self.db())
                .await
                .expect("count jobs");
            if pending == 0 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{pending} due job(s) still not run after 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A firmware package `fw` `version` for model X100 (which must exist)
    /// of one promoted file `name` holding `data`: (file id, package id).
    pub async fn firmware_package(&self, version: &str, name: &str, data: &[u8]) -> (String, String) {
        let (file, _) = self.promoted(name, data).await;
        let package = self
            .operator("package_admin")
            .ok(
                "mutation($v: String!, $f: ID!) { createSoftwarePackage(input: {name: \"fw\", version: $v, type: \"URL_LIST\", models: [\"X100\"], files: [$f]}) { package { id } } }",
                json!({"v": version, "f": file}),
            )
            .await["createSoftwarePackage"]["package"]["id"]
            .as_str()
            .expect("package id")
            .to_owned();
        (file, package)
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

/// One simulated device of the suite, speaking `/device/v1` over real HTTP
/// with its own secret: polls (plain, conditional, long), update status
/// reports, command results and inventory.
pub struct DeviceClient<'a> {
    pub app: &'a TestApp,
    pub endpoint_id: String,
    pub secret: String,
}

impl<'a> DeviceClient<'a> {
    pub fn new(app: &'a TestApp, endpoint_id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self { app, endpoint_id: endpoint_id.into(), secret: secret.into() }
    }

    /// The devices of [`fleet_in_group`] (or any (endpoint id, secret) list).
    pub fn all(app: &'a TestApp, devices: Vec<(String, String)>) -> Vec<Self> {
        devices.into_iter().map(|(endpoint_id, secret)| Self { app, endpoint_id, secret }).collect()
    }

    /// `GET /device/v1/poll`, conditional on `if_none_match`, long when
    /// `wait` is set: the status, the ETag and the body (null unless 200).
    pub async fn poll_with(
        &self,
        if_none_match: Option<&str>,
        wait: Option<u64>,
    ) -> (reqwest::StatusCode, Option<String>, Value) {
        let mut request = self.app.client.get(self.app.url("/device/v1/poll")).bearer_auth(&self.secret);
        if let Some(etag) = if_none_match {
            request = request.header("if-none-match", etag);
        }
        if let Some(wait) = wait {
            request = request.query(&[("wait", wait)]);
        }
        let response = request.send().await.expect("GET /device/v1/poll");
        let status = response.status();
        let etag = response.headers().get("etag").map(|v| v.to_str().expect("ASCII ETag").to_owned());
        let body =
            if status == reqwest::StatusCode::OK { response.json().await.expect("poll JSON") } else { Value::Null };
        (status, etag, body)
    }

    /// A plain poll: status and body.
    pub async fn poll(&self) -> (reqwest::StatusCode, Value) {
        let (status, _, body) = self.poll_with(None, None).await;
        (status, body)
    }

    /// The pending update (panics when there is none).
    pub async fn update(&self) -> Value {
        let (status, body) = self.poll().await;
        assert_eq!(status, reqwest::StatusCode::OK, "{} has no update", self.endpoint_id);
        body["update"].clone()
    }

    /// The commands of a poll (none on 204).
    pub async fn commands(&self) -> Vec<Value> {
        let (status, body) = self.poll().await;
        match status {
            reqwest::StatusCode::OK => body["commands"].as_array().expect("commands").clone(),
            reqwest::StatusCode::NO_CONTENT => Vec::new(),
            other => panic!("{}: poll answered {other}", self.endpoint_id),
        }
    }

    /// POST a JSON body to a device route: status and body (null when not JSON).
    pub async fn post(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let response = self
            .app
            .client
            .post(self.app.url(path))
            .bearer_auth(&self.secret)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A status report for `update` (an update object of a poll).
    pub async fn report(&self, update: &Value, body: Value) -> (reqwest::StatusCode, Value) {
        let id = update["id"].as_str().unwrap_or_else(|| panic!("an update with an id: {update}"));
        self.post(&format!("/device/v1/updates/{id}/status"), &body).await
    }

    /// Like [`DeviceClient::report`], asserting 200.
    pub async fn report_ok(&self, update: &Value, body: Value) -> Value {
        let (status, out) = self.report(update, body.clone()).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{}: {body} → {out}", self.endpoint_id);
        out
    }

    /// Walk the pending update through every step and install `version`.
    pub async fn install(&self, version: &str) {
        let update = self.update().await;
        for status in ["ACKNOWLEDGED", "DOWNLOADING", "DOWNLOADED", "INSTALLING"] {
            self.report_ok(&update, json!({"status": status, "progress": 50})).await;
        }
        self.report_ok(&update, json!({"status": "INSTALLED_VERSION", "version": version})).await;
    }

    /// A command result (`ACKNOWLEDGED`, `SUCCEEDED`, `FAILED`…).
    pub async fn command_result(&self, id: &str, body: Value) -> (reqwest::StatusCode, Value) {
        self.post(&format!("/device/v1/commands/{id}"), &body).await
    }

    /// Like [`DeviceClient::command_result`], asserting 200.
    pub async fn command_ok(&self, id: &str, body: Value) -> Value {
        let (status, out) = self.command_result(id, body.clone()).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{}: {body} → {out}", self.endpoint_id);
        out
    }

    /// `POST /device/v1/inventory`.
    pub async fn inventory(&self, body: Value) -> (reqwest::StatusCode, Value) {
        self.post("/device/v1/inventory", &body).await
    }
}
