//! Content upload into staging: the ExoSense `createContent` form, PUT,
//! verification of length and SHA-256, and what a refusal leaves behind.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{TestApp, count_rows, error_code, query_i64};

/// The seed's request, byte for byte (ExoSense OTA guide).
const SEED_REQUEST: &str = r#"[
  {
    "operationName": "CreateContentGQL",
    "variables": {
      "content": {
        "name": "package_oem_firmware_update_1.0.1.json",
        "content_type": "firmware",
        "type": "firmware",
        "length": 205,
        "tags": [
          {
            "name": "otau_info",
            "value": "{\"author\":\"user@example.com\",\"product\":\"myconnector\",\"config_otau\":{\"version\":\"1.0.1\",\"name\":\"firmware update\",\"description\":\"firmware update\",\"type\":\"URL_LIST\",\"payload\":[\"firmware_updatev101.txt\"]}}"
          },
          {
            "name": "pid",
            "value": "d1zzd6dflnt50000"
          },
          {
            "name": "total-devices",
            "value": 3
          },
          {
            "name": "d1zzd6dflnt50000.a0001",
            "value": "1"
          },
          {
            "name": "d1zzd6dflnt50000.a0002",
            "value": "1"
          },
          {
            "name": "d1zzd6dflnt50000.a0003",
            "value": "1"
          }
        ],
        "product_id": "d1zzd6dflnt50000"
      }
    },
    "query": "mutation CreateContentGQL($content: ContentInput) {\n  createContent(content: $content) {\n    id\n    url\n    inputs\n    method\n    field\n    enctype\n    __typename\n  }\n}\n"
  }
]"#;

/// POST [`SEED_REQUEST`] as it is, as ExoSense's `user@example.com`
/// (package_admin); returns the (batched) response body.
pub async fn send_seed_request(app: &TestApp) -> Value {
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(app.token_for("user@example.com", &["package_admin"]))
        .header("content-type", "application/json")
        .body(SEED_REQUEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

const CREATE: &str = "mutation($c: ContentInput) { createContent(content: $c) { id url inputs method field enctype } }";
const GET: &str = "query($id: ID!) { content(id: $id) { id name type length state sha256 md5 sha1 productId tags { name value } createdBy } }";

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn sha1_hex(data: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(data))
}

async fn create(app: &TestApp, length: usize, sha256: Option<String>) -> Value {
    app.operator("package_admin")
        .ok(CREATE, json!({"c": {"name": "fw.bin", "content_type": "application/octet-stream", "type": "firmware", "length": length, "sha256": sha256}}))
        .await["createContent"]
        .clone()
}

fn staged_files(app: &TestApp) -> usize {
    std::fs::read_dir(app.dir.path().join("staging/staging")).map(|d| d.count()).unwrap_or(0)
}

async fn post_form(app: &TestApp, form: &Value, data: Vec<u8>) -> reqwest::Response {
    let mut multipart = reqwest::multipart::Form::new();
    for (k, v) in form["inputs"].as_object().unwrap() {
        multipart = multipart.text(k.clone(), v.as_str().unwrap().to_owned());
    }
    multipart = multipart
        .part(form["field"].as_str().unwrap().to_owned(), reqwest::multipart::Part::bytes(data).file_name("fw.bin"));
    app.client.post(form["url"].as_str().unwrap()).multipart(multipart).send().await.unwrap()
}

#[tokio::test]
async fn the_seed_request_creates_content_with_its_tags_and_an_upload_form() {
    let app = TestApp::start_unscanned().await;
    // The package it describes names this file, uploaded first.
    app.promoted("firmware_updatev101.txt", b"firmware v1.0.1").await;
    let body = send_seed_request(&app).await;
    let form = &body[0]["data"]["createContent"];
    assert_eq!(form["__typename"], "ContentUpload", "{body}");
    assert_eq!(form["method"], "POST");
    assert_eq!(form["field"], "file");
    assert_eq!(form["enctype"], "multipart/form-data");
    assert!(form["url"].as_str().unwrap().starts_with(&format!("{}/uploads/content/", app.base)));
    assert_eq!(form["inputs"]["content_id"], form["id"]);

    let content = app.operator("viewer").ok(GET, json!({"id": form["id"]})).await["content"].clone();
    assert_eq!(content["state"], "AWAITING_UPLOAD");
    assert_eq!(content["length"], 205);
    assert_eq!(content["productId"], "d1zzd6dflnt50000");
    assert_eq!(content["createdBy"], "user@example.com");
    let tags: Vec<(String, String)> = content["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t["value"].as_str().unwrap().to_owned()))
        .collect();
    // The six of the request, and the binding of the payload's file name.
    assert_eq!(tags.len(), 7, "{tags:?}");
    assert!(tags.iter().any(|(n, _)| n == "otadepot.files"));
    assert!(tags.contains(&("total-devices".into(), "3".into())), "numbers are kept as text");
    assert!(tags.iter().any(|(n, v)| n == "otau_info" && v.contains("\"config_otau\"")));
}

#[tokio::test]
async fn a_multipart_upload_is_hashed_into_staging_and_queued_for_scanning() {
    let app = TestApp::start_with(|c| c.jobs.in_process = false).await;
    let data = bytes(300_000);
    let form = create(&app, data.len(), Some(sha256_hex(&data).to_uppercase())).await;
    let response = post_form(&app, &form, data.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "STAGED");
    assert_eq!(body["sha256"], sha256_hex(&data));
    assert_eq!(body["md5"], hex::encode(md5::Md5::digest(&data)));
    assert_eq!(body["sha1"], sha1_hex(&data));

    let content = app.operator("viewer").ok(GET, json!({"id": form["id"]})).await["content"].clone();
    assert_eq!(content["state"], "STAGED");
    assert_eq!(content["sha256"], sha256_hex(&data));
    assert_eq!(content["sha1"], sha1_hex(&data), "the SHA-1 hawkBit DDI clients check");
    let id = form["id"].as_str().unwrap();
    let staged = std::fs::read(app.dir.path().join("staging/staging").join(id)).unwrap();
    assert_eq!(staged, data, "byte-identical in staging, under its id (not its name)");
    assert_eq!(count_rows(app.db(), "job").await, 1, "one scan job queued with the change");
    let events = app
        .operator("auditor")
        .ok("query($id: String) { auditEvents(filter: {objectId: $id}) { edges { node { action actor { kind id } } } } }", json!({"id": id}))
        .await;
    let actions: Vec<&str> = events["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["content.upload", "content.create"]);

    // Once staged, the URL is spent.
    let again = post_form(&app, &form, data).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(error_code_http(again).await, "INVALID_STATE");
}

async fn error_code_http(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_put_of_the_raw_bytes_works_too() {
    let app = TestApp::start_with(|c| c.jobs.in_process = false).await;
    let data = bytes(10_000);
    let form = create(&app, data.len(), None).await;
    let response = app.client.put(form["url"].as_str().unwrap()).body(data.clone()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["sha256"], sha256_hex(&data));
    assert_eq!(body["sha1"], sha1_hex(&data));
    let content = app.operator("viewer").ok(GET, json!({"id": form["id"]})).await["content"].clone();
    assert_eq!(content["sha1"], sha1_hex(&data));
}

#[tokio::test]
async fn length_and_hash_mismatches_are_refused_and_leave_nothing_staged() {
    let app = TestApp::start_with(|c| c.jobs.in_process = false).await;
    let data = bytes(50_000);
    let form = create(&app, data.len(), Some(sha256_hex(&data))).await;
    let url = form["url"].as_str().unwrap();

    let mut tampered = data.clone();
    tampered[100] ^= 0xff;
    for (what, body) in
        [("short", data[..49_999].to_vec()), ("long", [data.clone(), vec![0]].concat()), ("hash", tampered)]
    {
        let response = post_form(&app, &form, body.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(error_code_http(response).await, "BAD_USER_INPUT", "{what}");
        let response = app.client.put(url).body(body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what} (PUT)");
        assert_eq!(staged_files(&app), 0, "{what}: nothing staged");
        let content = app.operator("viewer").ok(GET, json!({"id": form["id"]})).await;
        assert_eq!(content["content"]["state"], "AWAITING_UPLOAD", "{what}");
    }
    assert_eq!(count_rows(app.db(), "job").await, 0);

    // And the content can still be uploaded.
    let response = post_form(&app, &form, data).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(staged_files(&app), 1);
}

#[tokio::test]
async fn the_upload_url_is_bound_to_its_content_and_expires() {
    let app = TestApp::start_with(|c| c.jobs.in_process = false).await;
    let data = bytes(1000);
    let form = create(&app, data.len(), None).await;
    let other = create(&app, data.len(), None).await;
    let url = form["url"].as_str().unwrap();
    let other_id = other["id"].as_str().unwrap();
    let id = form["id"].as_str().unwrap();

    let cases = [
        url.replace(id, other_id),
        url.replace("sig=", "sig=AAAA"),
        url.replace("exp=", "exp=1"),
        url.split("&sig").next().unwrap().to_owned() + "&sig=",
    ];
    for tampered in cases {
        let response = app.client.put(&tampered).body(data.clone()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{tampered}");
        assert_eq!(error_code_http(response).await, "FORBIDDEN");
    }
    let unknown = url.replace(id, &uuid::Uuid::now_v7().to_string());
    assert_eq!(app.client.put(&unknown).body(data.clone()).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    // A form whose content_id input disagrees with the URL.
    let mut wrong = form.clone();
    wrong["inputs"]["content_id"] = json!(other_id);
    assert_eq!(post_form(&app, &wrong, data.clone()).await.status(), StatusCode::BAD_REQUEST);

    let expired = TestApp::start_with(|c| {
        c.jobs.in_process = false;
        c.http.upload_url_ttl = std::time::Duration::from_secs(0);
    })
    .await;
    let form = create(&expired, data.len(), None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let response = expired.client.put(form["url"].as_str().unwrap()).body(data).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(staged_files(&expired), 0);
}

#[tokio::test]
async fn create_content_validates_its_input() {
    let app = TestApp::start_with(|c| c.http.max_upload_bytes = 1_000_000).await;
    let op = app.operator("package_admin");
    let base = json!({"name": "fw.bin", "content_type": "application/octet-stream", "type": "firmware", "length": 10});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        json!({ "c": c })
    };
    let cases = [
        (with("name", json!("")), "BAD_USER_INPUT", "name"),
        (with("name", json!("a\nb")), "BAD_USER_INPUT", "name"),
        (with("type", json!("fw/../x")), "BAD_USER_INPUT", "type"),
        (with("length", json!(-1)), "BAD_USER_INPUT", "length"),
        (with("sha256", json!("xyz")), "BAD_USER_INPUT", "sha256"),
        (
            with("tags", json!([{"name": "a", "value": "1"}, {"name": "a", "value": "2"}])),
            "BAD_USER_INPUT",
            "tags.name",
        ),
        (with("length", json!(2_000_000)), "PAYLOAD_TOO_LARGE", ""),
    ];
    let before = count_rows(app.db(), "content").await;
    for (variables, code, field) in cases {
        let body = op.gql(CREATE, variables.clone()).await;
        assert_eq!(error_code(&body), code, "{variables}: {body}");
        if !field.is_empty() {
            assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
        }
    }
    let body = op.gql(CREATE, json!({})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert_eq!(count_rows(app.db(), "content").await, before);
}

#[tokio::test]
async fn contents_list_filters_and_pages() {
    let app = TestApp::start_with(|c| c.jobs.in_process = false).await;
    let op = app.operator("package_admin");
    for i in 0..5 {
        op.ok(
            CREATE,
            json!({"c": {"name": format!("f{i}"), "content_type": "x", "type": if i % 2 == 0 { "firmware" } else { "config" }, "length": 1,
                "product_id": "p1", "tags": [{"name": "batch", "value": i % 2}]}}),
        )
        .await;
    }
    let list = "query($f: ContentFilter, $after: String) { contents(first: 2, filter: $f, after: $after) { totalCount pageInfo { hasNextPage endCursor } edges { node { name type tags { name value } } } } }";
    let viewer = app.operator("viewer");
    let data = viewer.ok(list, json!({})).await;
    assert_eq!(data["contents"]["totalCount"], 5);
    assert_eq!(data["contents"]["edges"][0]["node"]["name"], "f4", "newest first");
    let next = viewer.ok(list, json!({"after": data["contents"]["pageInfo"]["endCursor"]})).await;
    assert_eq!(next["contents"]["edges"][0]["node"]["name"], "f2");
    let data = viewer.ok(list, json!({"f": {"type": "config"}})).await;
    assert_eq!(data["contents"]["totalCount"], 2);
    let data = viewer.ok(list, json!({"f": {"tag": {"name": "batch", "value": "0"}}})).await;
    assert_eq!(data["contents"]["totalCount"], 3);
    let data = viewer.ok(list, json!({"f": {"state": "STAGED"}})).await;
    assert_eq!(data["contents"]["totalCount"], 0);
    let data = viewer.ok(list, json!({"f": {"productId": "p2"}})).await;
    assert_eq!(data["contents"]["totalCount"], 0);
}

/// A plain multipart client: curl, with the form the seed's exact request
/// returns (its content is 205 bytes).
#[tokio::test]
async fn curl_can_upload_with_the_form_of_the_seed_request() {
    let app = TestApp::start_unscanned().await;
    app.promoted("firmware_updatev101.txt", b"firmware v1.0.1").await;
    let body = send_seed_request(&app).await;
    let form = body[0]["data"]["createContent"].clone();
    let data = bytes(205);
    let file = app.dir.path().join("package_oem_firmware_update_1.0.1.json");
    std::fs::write(&file, &data).unwrap();
    let mut command = std::process::Command::new("curl");
    command.args(["-sS", "-w", "\n%{http_code}"]);
    for (k, v) in form["inputs"].as_object().unwrap() {
        command.arg("-F").arg(format!("{k}={}", v.as_str().unwrap()));
    }
    command.arg("-F").arg(format!("{}=@{}", form["field"].as_str().unwrap(), file.display()));
    command.arg(form["url"].as_str().unwrap());
    // Off the test's runtime thread, which also serves the requests.
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("curl is installed");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.ends_with("201"), "{stdout}");
    assert!(stdout.contains(&sha256_hex(&data)));
}

const SET_TAGS: &str = "mutation($id: ID!, $tags: [TagInput!]!) { setContentTags(input: {id: $id, tags: $tags}) { content { tags { name value } } } }";
const DELETE: &str = "mutation($id: ID!) { deleteContent(input: {id: $id}) { content { state } } }";

#[tokio::test]
async fn tags_are_replaced_and_deleted_content_is_gone() {
    let app = TestApp::start_with(|c| c.jobs.in_process = false).await;
    let data = bytes(1000);
    let form = create(&app, data.len(), None).await;
    let id = form["id"].as_str().unwrap();
    let op = app.operator("package_admin");
    let data_tags = op
        .ok(SET_TAGS, json!({"id": id, "tags": [{"name": "channel", "value": "beta"}, {"name": "build", "value": 42}]}))
        .await;
    assert_eq!(
        data_tags["setContentTags"]["content"]["tags"],
        json!([{"name": "build", "value": "42"}, {"name": "channel", "value": "beta"}])
    );
    let body =
        op.gql(SET_TAGS, json!({"id": id, "tags": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");

    post_form(&app, &form, data).await;
    assert_eq!(staged_files(&app), 1);
    let deleted = op.ok(DELETE, json!({"id": id})).await;
    assert_eq!(deleted["deleteContent"]["content"]["state"], "DELETED");
    assert_eq!(staged_files(&app), 0, "the staged object goes with it");
    assert_eq!(error_code(&op.gql(DELETE, json!({"id": id})).await), "INVALID_STATE");
    assert_eq!(error_code(&op.gql(SET_TAGS, json!({"id": id, "tags": []})).await), "INVALID_STATE");
    let list = app.operator("viewer").ok("{ contents { totalCount } }", json!({})).await;
    assert_eq!(list["contents"]["totalCount"], 0, "deleted content is not listed by default");
    let list = app.operator("viewer").ok("{ contents(filter: {state: DELETED}) { totalCount } }", json!({})).await;
    assert_eq!(list["contents"]["totalCount"], 1);
    let missing = op.gql(DELETE, json!({"id": uuid::Uuid::now_v7().to_string()})).await;
    assert_eq!(error_code(&missing), "NOT_FOUND");
    let bad = op.gql(DELETE, json!({"id": "not-a-uuid"})).await;
    assert_eq!(error_code(&bad), "BAD_USER_INPUT");
}

/// A client that goes away halfway leaves nothing staged and the content
/// uploadable again.
#[tokio::test]
async fn a_dropped_connection_releases_the_upload() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::start_with(|c| c.jobs.in_process = false).await;
    let data = bytes(200_000);
    let form = create(&app, data.len(), None).await;
    let url = reqwest::Url::parse(form["url"].as_str().unwrap()).unwrap();
    let mut stream = tokio::net::TcpStream::connect(app.server().addr).await.unwrap();
    let head = format!(
        "PUT {}?{} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        url.path(),
        url.query().unwrap(),
        app.server().addr,
        data.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&data[..50_000]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(stream);

    let id = form["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let content = app.operator("viewer").ok(GET, json!({"id": id})).await;
        if content["content"]["state"] == "AWAITING_UPLOAD" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "upload not released: {content}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(staged_files(&app), 0);
    assert_eq!(
        app.client.put(form["url"].as_str().unwrap()).body(data).send().await.unwrap().status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_restart_fills_in_the_sha1_of_content_stored_without_one() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let mut app = TestApp::start_unscanned().await;
    let data = bytes(700_000);
    let (id, _) = app.promoted("old.bin", &data).await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    // As stored before uploads computed SHA-1.
    entity::content::Entity::update_many()
        .col_expr(entity::content::Column::Sha1, sea_orm::sea_query::Expr::value(Option::<String>::None))
        .filter(entity::content::Column::Id.eq(uuid))
        .exec(app.db())
        .await
        .unwrap();
    let read = async |app: &TestApp| app.operator("viewer").ok(GET, json!({"id": id})).await["content"].clone();
    assert_eq!(read(&app).await["sha1"], Value::Null);

    // The job runner queues the backfill as it starts.
    let config = app.server().app.config.clone();
    let server = app.server.take().unwrap();
    server.shutdown();
    server.wait().await.unwrap();
    let mut config = config;
    config.listen = "127.0.0.1:0".parse().unwrap();
    let server = otadepot::server::Server::start(config).await.unwrap();
    app.base = format!("http://{}", server.addr);
    app.server = Some(server);
    let queued = query_i64(app.db(), "SELECT COUNT(*) AS n FROM job WHERE kind = 'content.sha1_backfill'").await;
    assert_eq!(queued, 1, "queued once, at startup");
    app.drain_jobs().await;

    let content = read(&app).await;
    assert_eq!(content["sha1"], sha1_hex(&data), "{content}");
    assert_eq!(content["state"], "PROMOTED");
    let events = app
        .operator("auditor")
        .ok("query($id: String) { auditEvents(filter: {objectId: $id}) { edges { node { action actor { kind id } details } } } }", json!({"id": id}))
        .await;
    let latest = &events["auditEvents"]["edges"][0]["node"];
    assert_eq!(latest["action"], "content.sha1_backfill", "{events}");
    assert_eq!(latest["actor"]["kind"], "system", "{events}");

    // Nothing is left to do: the next start queues no job.
    let server = app.server.take().unwrap();
    let config = server.app.config.clone();
    server.shutdown();
    server.wait().await.unwrap();
    let server = otadepot::server::Server::start(config).await.unwrap();
    app.base = format!("http://{}", server.addr);
    app.server = Some(server);
    let queued = query_i64(app.db(), "SELECT COUNT(*) AS n FROM job WHERE kind = 'content.sha1_backfill'").await;
    assert_eq!(queued, 1, "no second backfill");
}
