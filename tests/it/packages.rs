//! Software packages: the ExoSense request, createSoftwarePackage, the
//! signed device manifest, validation, uniqueness, deletion, ordering.

use std::collections::BTreeMap;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::content::send_seed_request;
use crate::support::{TestApp, count_rows, error_code};

const CREATE_PACKAGE: &str = "mutation($i: CreateSoftwarePackageInput!) { createSoftwarePackage(input: $i) {
    package { id contentId component name version description type author deprecated createdBy
              models { name } files { name contentId url length sha256 md5 sha1 } links configOtau } } }";
const CREATE_MODEL: &str = "mutation($n: String!) { createDeviceModel(input: {name: $n}) { deviceModel { id name } } }";
const MANIFEST: &str = "query($id: ID!) { packageManifest(id: $id) }";
const CREATE_CONTENT: &str = "mutation($c: ContentInput) { createContent(content: $c) { id } }";
const CONTENT: &str = "query($id: ID!) { content(id: $id) { state type length tags { name value } } }";

async fn model(app: &TestApp, name: &str) -> String {
    app.operator("device_admin").ok(CREATE_MODEL, json!({"n": name})).await["createDeviceModel"]["deviceModel"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn create_package(app: &TestApp, input: Value) -> Value {
    app.operator("package_admin").ok(CREATE_PACKAGE, json!({"i": input})).await["createSoftwarePackage"]["package"]
        .clone()
}

/// `extensions.code` and `extensions.field` of the first error.
fn code_and_field(body: &Value) -> (String, String) {
    (error_code(body), body["errors"][0]["extensions"]["field"].as_str().unwrap_or_default().to_owned())
}

fn tags(content: &Value) -> BTreeMap<String, String> {
    content["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t["value"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn the_seed_request_creates_the_package_from_its_otau_info_tag() {
    let app = TestApp::start_unscanned().await;
    let (file_id, _) = app.promoted("firmware_updatev101.txt", b"firmware v1.0.1").await;
    let body = send_seed_request(&app).await;
    assert!(body[0].get("errors").is_none(), "{body}");
    let holder = body[0]["data"]["createContent"]["id"].as_str().unwrap().to_owned();

    let list = app
        .operator("viewer")
        .ok("{ packages { totalCount edges { node { id contentId component name version description type author files { name contentId } links } } } }", json!({}))
        .await;
    assert_eq!(list["packages"]["totalCount"], 1);
    let package = &list["packages"]["edges"][0]["node"];
    assert_eq!(package["contentId"], holder.as_str());
    assert_eq!(package["component"], "myconnector");
    assert_eq!(package["version"], "1.0.1");
    assert_eq!(package["name"], "firmware update");
    assert_eq!(package["description"], "firmware update");
    assert_eq!(package["type"], "URL_LIST");
    assert_eq!(package["author"], "user@example.com");
    assert_eq!(package["files"], json!([{"name": "firmware_updatev101.txt", "contentId": file_id}]));
    assert_eq!(package["links"], json!([]));

    // The holder keeps every tag of the request, and awaits its 205 bytes
    // like any content (ExoSense clients upload them next).
    let content = app.operator("viewer").ok(CONTENT, json!({"id": holder})).await["content"].clone();
    assert_eq!(content["state"], "AWAITING_UPLOAD");
    let tags = tags(&content);
    for name in ["otau_info", "pid", "total-devices", "d1zzd6dflnt50000.a0001", "d1zzd6dflnt50000.a0003"] {
        assert!(tags.contains_key(name), "{name} kept: {tags:?}");
    }
    assert_eq!(tags["total-devices"], "3");

    let manifest = app.operator("viewer").ok(MANIFEST, json!({"id": package["id"]})).await["packageManifest"].clone();
    let url = format!("{}/repo/{file_id}/firmware_updatev101.txt", app.base);
    assert_eq!(manifest["payload"], json!([url]));
    assert_eq!(manifest["version"], "1.0.1");
}

#[tokio::test]
async fn a_holder_of_length_zero_is_promoted_at_once_and_links_need_no_upload() {
    let app = TestApp::start().await;
    let otau = json!({"author": "a@example.com", "product": "myconnector", "config_otau": {
        "version": "08-14-2021", "name": "Update Device Packages 08-14-2021", "description": "", "type": "URL_LIST",
        "payload": ["https://mycontentserver.com/file1", "https://mycontentserver.com/file2"]}});
    let content = json!({"name": "package.json", "content_type": "application/json", "type": "manifest", "length": 0,
        "tags": [{"name": "otau_info", "value": otau.to_string()}]});
    let id =
        app.operator("package_admin").ok(CREATE_CONTENT, json!({"c": content})).await["createContent"]["id"].clone();
    let content = app.operator("viewer").ok(CONTENT, json!({"id": id})).await["content"].clone();
    assert_eq!(content["state"], "PROMOTED");
    let package =
        &app.operator("viewer").ok("{ packages { edges { node { version links files { name } } } } }", json!({})).await
            ["packages"]["edges"][0]["node"];
    assert_eq!(package["version"], "08-14-2021");
    assert_eq!(package["links"], json!(["https://mycontentserver.com/file1", "https://mycontentserver.com/file2"]));
    assert_eq!(package["files"], json!([]));
    // Nothing to download at the holder's repository URL.
    let response = app
        .client
        .get(app.url(&format!("/repo/{}/package.json", id.as_str().unwrap())))
        .bearer_auth(app.token_for("v", &["viewer"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_malformed_otau_info_is_refused_saying_what_is_wrong() {
    let app = TestApp::start_unscanned().await;
    app.promoted("fw.bin", b"fw").await;
    let before = count_rows(app.db(), "content").await;
    let good = json!({"version": "1.0.0", "name": "n", "type": "URL_LIST", "payload": ["fw.bin"]});
    let with = |patch: Value| {
        let mut config = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                config.as_object_mut().unwrap().remove(k);
            } else {
                config[k] = v.clone();
            }
        }
        json!({"author": "a", "product": "p", "config_otau": config}).to_string()
    };
    let cases = [
        ("not json".to_owned(), "otau_info"),
        (json!({"author": "a", "product": "p"}).to_string(), "otau_info.config_otau"),
        (json!({"author": "a", "config_otau": good}).to_string(), "otau_info.product"),
        (with(json!({"version": null})), "otau_info.config_otau.version"),
        (with(json!({"name": ""})), "otau_info.config_otau.name"),
        (with(json!({"type": "ZIP"})), "otau_info.config_otau.type"),
        (with(json!({"payload": []})), "otau_info.config_otau.payload"),
        (with(json!({"payload": "fw.bin"})), "otau_info.config_otau.payload"),
        (with(json!({"payload": ["missing.bin"]})), "otau_info.config_otau.payload[0]"),
        (with(json!({"payload": ["fw.bin", "ftp://example.com/x"]})), "otau_info.config_otau.payload[1]"),
        (with(json!({"signature": "x"})), "otau_info.config_otau.signature"),
    ];
    for (otau_info, field) in cases {
        let content = json!({"name": "p.json", "content_type": "application/json", "type": "manifest", "length": 0,
            "tags": [{"name": "otau_info", "value": otau_info}]});
        let body = app.operator("package_admin").gql(CREATE_CONTENT, json!({"c": content})).await;
        assert_eq!(code_and_field(&body), ("BAD_USER_INPUT".to_owned(), field.to_owned()), "{otau_info}: {body}");
        assert!(body["errors"][0]["message"].as_str().unwrap().starts_with(field), "{body}");
    }
    assert_eq!(count_rows(app.db(), "content").await, before, "nothing half-written");
    assert_eq!(count_rows(app.db(), "package").await, 0);
}

#[tokio::test]
async fn a_package_of_files_and_links_stores_the_seed_manifest_shape() {
    let app = TestApp::start_unscanned().await;
    let x100 = model(&app, "X100").await;
    let (file_id, _) = app.promoted("firmware_updatev102.txt", b"firmware v1.0.2").await;
    let package = create_package(
        &app,
        json!({"name": "Firmware update", "version": "1.0.2", "description": "firmware package updated",
               "type": "URL_LIST", "models": [x100], "files": [file_id], "links": ["https://example.com/file1"]}),
    )
    .await;
    assert_eq!(package["component"], "firmware");
    assert_eq!(package["models"], json!([{"name": "X100"}]));
    assert_eq!(package["links"], json!(["https://example.com/file1"]));
    assert_eq!(package["files"][0]["name"], "firmware_updatev102.txt");
    assert_eq!(package["files"][0]["length"], 15);
    assert_eq!(package["files"][0]["sha1"], hex::encode(sha1::Sha1::digest(b"firmware v1.0.2")));
    assert_eq!(package["createdBy"], "package_admin-user");
    assert_eq!(package["author"], "package_admin-user");

    // The holder: an empty, PROMOTED manifest content whose otau_info tag
    // is the seed's shape, files named without a host.
    let holder = app.operator("viewer").ok(CONTENT, json!({"id": package["contentId"]})).await["content"].clone();
    assert_eq!(
        (holder["state"].as_str(), holder["type"].as_str(), holder["length"].as_i64()),
        (Some("PROMOTED"), Some("manifest"), Some(0))
    );
    let otau: Value = serde_json::from_str(&tags(&holder)["otau_info"]).unwrap();
    assert_eq!(
        otau,
        json!({"author": "package_admin-user", "product": "firmware", "config_otau": {
            "version": "1.0.2", "name": "Firmware update", "description": "firmware package updated",
            "type": "URL_LIST", "payload": ["firmware_updatev102.txt", "https://example.com/file1"]}})
    );

    // A package of links only.
    let links = create_package(
        &app,
        json!({"name": "Update Device Packages 08-14-2021", "version": "08-14-2021", "type": "URL_LIST",
               "models": ["X100"], "links": ["https://mycontentserver.com/file1", "https://mycontentserver.com/file2"]}),
    )
    .await;
    assert_eq!(links["files"], json!([]));
    assert_eq!(
        links["configOtau"]["payload"],
        json!(["https://mycontentserver.com/file1", "https://mycontentserver.com/file2"])
    );

    // Audited with who did it.
    let events = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"package.create\"}) { totalCount edges { node { actor { id } objectId } } } }", json!({}))
        .await;
    assert_eq!(events["auditEvents"]["totalCount"], 2);
    assert_eq!(events["auditEvents"]["edges"][0]["node"]["actor"]["id"], "package_admin-user");
}

fn canonical(value: &Value) -> Vec<u8> {
    // Independent of the server's own implementation: rebuild every object
    // with its keys inserted in sorted order (serde_json keeps insertion
    // order), then print it compactly.
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sorted(value)).unwrap().into_bytes()
}

#[tokio::test]
async fn the_manifest_is_signed_and_verifies_with_the_published_key_only_untouched() {
    let app = TestApp::start_unscanned().await;
    let x100 = model(&app, "X100").await;
    let data = b"firmware image bytes".to_vec();
    let (file_id, _) = app.promoted("fw image.bin", &data).await;
    let package = create_package(
        &app,
        json!({"name": "Security update", "version": "2.1.0", "type": "URL_LIST", "models": [x100],
               "files": [file_id], "links": ["https://cdn.example.com/extra"]}),
    )
    .await;
    let manifest = app.operator("viewer").ok(MANIFEST, json!({"id": package["id"]})).await["packageManifest"].clone();

    // What a device gets: config_otau's fields, payload resolved, files, signature.
    let url = format!("{}/repo/{file_id}/fw%20image.bin", app.base);
    assert_eq!(manifest["payload"], json!([url, "https://cdn.example.com/extra"]));
    let sha = hex::encode(Sha256::digest(&data));
    assert_eq!(
        manifest["files"],
        json!([{"name": "fw image.bin", "url": url, "length": data.len(), "sha256": sha, "md5": hex::encode(md5::Md5::digest(&data))}])
    );
    for key in ["version", "name", "description", "type"] {
        assert!(manifest.get(key).is_some(), "{key}");
    }
    // The file URL serves those bytes.
    let bytes =
        app.client.get(&url).bearer_auth(app.token_for("v", &["viewer"])).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);

    // The published keys: the well-known document and signingKeys agree.
    let keys: Value = app.client.get(app.url("/.well-known/otadepot/keys")).send().await.unwrap().json().await.unwrap();
    let graphql_keys = app.operator("viewer").ok("{ signingKeys { kid algorithm publicKey active } }", json!({})).await;
    assert_eq!(keys["keys"][0]["kid"], graphql_keys["signingKeys"][0]["kid"]);
    assert_eq!(graphql_keys["signingKeys"][0]["active"], true);
    assert_eq!(graphql_keys["signingKeys"][0]["algorithm"], "Ed25519");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(keys["keys"][0]["x"].as_str().unwrap()).unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.encode(&raw), graphql_keys["signingKeys"][0]["publicKey"]);

    let signature = &manifest["signature"];
    assert_eq!(signature["alg"], "Ed25519");
    assert_eq!(signature["kid"], keys["keys"][0]["kid"]);
    let sig = base64::engine::general_purpose::STANDARD.decode(signature["value"].as_str().unwrap()).unwrap();
    let mut rest = manifest.clone();
    rest.as_object_mut().unwrap().remove("signature");
    let message = canonical(&rest);
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, raw);
    key.verify(&message, &sig).expect("the signature verifies");
    for i in 0..message.len() {
        let mut changed = message.clone();
        changed[i] ^= 0x01;
        assert!(key.verify(&changed, &sig).is_err(), "byte {i} changed and it still verified");
    }

    // The same check as docs/verify_manifest.py, for firmware authors.
    verify_with_python(&manifest, &keys, true);
    let mut tampered = manifest.clone();
    tampered["version"] = json!("2.1.1");
    verify_with_python(&tampered, &keys, false);
    let mut tampered = manifest.clone();
    tampered["files"][0]["sha256"] = json!("0".repeat(64));
    verify_with_python(&tampered, &keys, false);

    // The same manifest every time (a device's poll can cache it).
    let again = app.operator("viewer").ok(MANIFEST, json!({"id": package["id"]})).await["packageManifest"].clone();
    assert_eq!(again, manifest);
}

/// Run docs/verify_manifest.py with Debian's python3 and its
/// python3-cryptography (scripts/test installs it); skipped without them
/// outside CI.
fn verify_with_python(manifest: &Value, keys: &Value, expect_ok: bool) {
    let python = "/usr/bin/python3";
    let has_crypto = std::process::Command::new(python)
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_crypto {
        assert!(std::env::var_os("CI").is_none(), "CI must have python3-cryptography");
        eprintln!("skipped: {python} with cryptography not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    std::fs::write(dir.path().join("keys.json"), keys.to_string()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/verify_manifest.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(dir.path().join("manifest.json"))
        .arg(dir.path().join("keys.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.success(), expect_ok, "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.trim() == "OK", expect_ok, "{stdout}");
}

#[tokio::test]
async fn every_validation_error_names_its_field() {
    let app = TestApp::start_unscanned().await;
    let x100 = model(&app, "X100").await;
    let (promoted, _) = app.promoted("a.bin", b"a").await;
    let waiting = app
        .operator("package_admin")
        .ok(CREATE_CONTENT, json!({"c": {"name": "w.bin", "content_type": "x", "type": "firmware", "length": 3}}))
        .await["createContent"]["id"]
        .clone();
    let (deleted, _) = app.promoted("d.bin", b"d").await;
    app.operator("package_admin")
        .ok("mutation($id: ID!) { deleteContent(input: {id: $id}) { content { state } } }", json!({"id": deleted}))
        .await;
    let (same_name, _) = app.promoted("a.bin", b"a2").await;

    let base = json!({"name": "n", "version": "1.0.0", "type": "URL_LIST", "models": [x100], "files": [promoted]});
    let with = |patch: Value| {
        let mut input = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            input[k] = v.clone();
        }
        input
    };
    let cases = [
        (with(json!({"name": "  "})), "name"),
        (with(json!({"version": ""})), "version"),
        (with(json!({"version": "1.0 beta"})), "version"),
        (with(json!({"type": ""})), "type"),
        (with(json!({"type": "ZIP"})), "type"),
        (with(json!({"component": "no spaces allowed"})), "component"),
        (with(json!({"product": "no spaces allowed"})), "product"),
        (with(json!({"component": "a", "product": "b"})), "input.product"),
        (with(json!({"files": [], "links": []})), "files"),
        (with(json!({"files": [waiting]})), "files[0]"),
        (with(json!({"files": [promoted, deleted]})), "files[1]"),
        (with(json!({"files": ["00000000-0000-7000-8000-000000000000"]})), "files[0]"),
        (with(json!({"files": ["not-an-id"]})), "files[0]"),
        (with(json!({"files": [promoted, same_name]})), "files[1]"),
        (with(json!({"links": ["ftp://example.com/f"]})), "links[0]"),
        (with(json!({"links": ["https://example.com/ok", "/relative/path"]})), "links[1]"),
        (with(json!({"models": []})), "models"),
        (with(json!({"models": [x100, "NO-SUCH-MODEL"]})), "models[1]"),
    ];
    for (input, field) in cases {
        let body = app.operator("package_admin").gql(CREATE_PACKAGE, json!({"i": input})).await;
        assert_eq!(code_and_field(&body), ("BAD_USER_INPUT".to_owned(), field.to_owned()), "{input}: {body}");
    }
    assert_eq!(count_rows(app.db(), "package").await, 0);
    assert_eq!(count_rows(app.db(), "package_file").await, 0);
    // And the base input is fine.
    create_package(&app, base).await;
}

#[tokio::test]
async fn a_version_is_unique_per_component_and_model() {
    let app = TestApp::start_unscanned().await;
    let (x100, s200) = (model(&app, "X100").await, model(&app, "S200").await);
    let input = |models: Value, component: &str| {
        json!({"name": "fw", "version": "1.0.0", "type": "URL_LIST", "component": component, "models": models,
               "links": ["https://example.com/fw"]})
    };
    create_package(&app, input(json!([x100]), "firmware")).await;
    let body = app.operator("package_admin").gql(CREATE_PACKAGE, json!({"i": input(json!([x100]), "firmware")})).await;
    assert_eq!(error_code(&body), "CONFLICT", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("X100"), "{body}");
    let body =
        app.operator("package_admin").gql(CREATE_PACKAGE, json!({"i": input(json!([s200, x100]), "firmware")})).await;
    assert_eq!(error_code(&body), "CONFLICT", "{body}");
    // Another model's firmware 1.0.0, and another component's 1.0.0, are fine.
    let s200_package = create_package(&app, input(json!([s200]), "firmware")).await;
    create_package(&app, input(json!([x100]), "agent")).await;
    // Moving S200's package onto X100 would make two.
    let body = app
        .operator("package_admin")
        .gql(
            "mutation($id: ID!, $m: [ID!]!) { setPackageModels(input: {id: $id, models: $m}) { package { id } } }",
            json!({"id": s200_package["id"], "m": [x100]}),
        )
        .await;
    assert_eq!(error_code(&body), "CONFLICT", "{body}");
    // The ExoSense way is held to the same rule (no models: conflicts with any).
    let otau = json!({"author": "a", "product": "firmware", "config_otau": {"version": "1.0.0", "name": "n",
        "type": "URL_LIST", "payload": ["https://example.com/fw"]}});
    let body = app
        .operator("package_admin")
        .gql(
            CREATE_CONTENT,
            json!({"c": {"name": "p.json", "content_type": "application/json", "type": "manifest",
            "length": 0, "tags": [{"name": "otau_info", "value": otau.to_string()}]}}),
        )
        .await;
    assert_eq!(error_code(&body), "CONFLICT", "{body}");
    assert_eq!(count_rows(app.db(), "package").await, 3);
}

#[tokio::test]
async fn files_models_and_holders_in_use_cannot_be_deleted_until_the_package_is() {
    let app = TestApp::start_unscanned().await;
    let x100 = model(&app, "X100").await;
    let (file_id, _) = app.promoted("fw.bin", b"fw").await;
    let package = create_package(
        &app,
        json!({"name": "fw", "version": "3.0.0", "type": "URL_LIST", "models": [x100], "files": [file_id]}),
    )
    .await;
    let admin = app.operator("admin");
    let delete_content = "mutation($id: ID!) { deleteContent(input: {id: $id}) { content { state } } }";
    let delete_model = "mutation($id: ID!) { deleteDeviceModel(input: {id: $id}) { deviceModel { name } } }";
    let set_tags =
        "mutation($id: ID!, $t: [TagInput!]!) { setContentTags(input: {id: $id, tags: $t}) { content { id } } }";
    for (query, id) in [
        (delete_content, &package["files"][0]["contentId"]),
        (delete_content, &package["contentId"]),
        (delete_model, &json!(x100)),
    ] {
        let body = admin.gql(query, json!({"id": id})).await;
        assert_eq!(error_code(&body), "CONFLICT", "{query}: {body}");
    }
    // The manifest tags cannot change; other tags of the holder can.
    let holder = admin.ok(CONTENT, json!({"id": package["contentId"]})).await["content"].clone();
    let mut current: Vec<Value> = holder["tags"].as_array().unwrap().clone();
    let mut edited = current.clone();
    for tag in &mut edited {
        if tag["name"] == "otau_info" {
            tag["value"] = json!(tag["value"].as_str().unwrap().replace("3.0.0", "3.0.1"));
        }
    }
    let body = admin.gql(set_tags, json!({"id": package["contentId"], "t": edited})).await;
    assert_eq!(code_and_field(&body), ("BAD_USER_INPUT".to_owned(), "tags.name".to_owned()), "{body}");
    current.push(json!({"name": "pid", "value": "d1zzd6dflnt50000"}));
    admin.ok(set_tags, json!({"id": package["contentId"], "t": current})).await;
    // A manifest tag on other content is refused.
    let body = admin.gql(set_tags, json!({"id": file_id, "t": [{"name": "otau_info", "value": "{}"}]})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");

    let deleted = admin
        .ok(
            "mutation($id: ID!) { deletePackage(input: {id: $id}) { package { id version } } }",
            json!({"id": package["id"]}),
        )
        .await;
    assert_eq!(deleted["deletePackage"]["package"]["version"], "3.0.0");
    assert_eq!(
        admin.error_code("query($id: ID!) { package(id: $id) { id } }", json!({"id": package["id"]})).await,
        "NOT_FOUND"
    );
    assert_eq!(admin.ok(CONTENT, json!({"id": package["contentId"]})).await["content"]["state"], "DELETED");
    assert_eq!(
        admin
            .error_code(
                "mutation($id: ID!) { deletePackage(input: {id: $id}) { package { id } } }",
                json!({"id": package["id"]})
            )
            .await,
        "NOT_FOUND"
    );
    // Now the file and the model are free.
    assert_eq!(admin.ok(delete_content, json!({"id": file_id})).await["deleteContent"]["content"]["state"], "DELETED");
    admin.ok(delete_model, json!({"id": x100})).await;
    // And the version can be created again.
    let x200 = model(&app, "X200").await;
    create_package(
        &app,
        json!({"name": "fw", "version": "3.0.0", "type": "URL_LIST", "models": [x200], "links": ["https://e.com/x"]}),
    )
    .await;
}

#[tokio::test]
async fn versions_order_semantically_then_other_strings_by_creation() {
    let app = TestApp::start().await;
    let x100 = model(&app, "X100").await;
    for version in ["1.10.0", "08-14-2021", "1.2.0", "1.2.0-rc.1", "2.0.0", "build-7", "1.2.0-rc.10"] {
        create_package(&app, json!({"name": "fw", "version": version, "type": "URL_LIST", "models": [x100], "links": ["https://e.com/f"]})).await;
    }
    let expected = ["2.0.0", "1.10.0", "1.2.0", "1.2.0-rc.10", "1.2.0-rc.1", "build-7", "08-14-2021"];
    let query = "query($after: String) { packages(orderBy: VERSION, first: 2, after: $after) {
        totalCount pageInfo { hasNextPage endCursor } edges { node { version } } } }";
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = app.operator("viewer").ok(query, json!({"after": after})).await["packages"].clone();
        assert_eq!(page["totalCount"], 7);
        seen.extend(
            page["edges"].as_array().unwrap().iter().map(|e| e["node"]["version"].as_str().unwrap().to_owned()),
        );
        if page["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(seen, expected);
    // The default order is newest first.
    let newest = app.operator("viewer").ok("{ packages(first: 1) { edges { node { version } } } }", json!({})).await;
    assert_eq!(newest["packages"]["edges"][0]["node"]["version"], "1.2.0-rc.10");
}

#[tokio::test]
async fn packages_filter_by_model_name_version_type_and_deprecation() {
    let app = TestApp::start().await;
    let (x100, s200) = (model(&app, "X100").await, model(&app, "S200").await);
    let a = create_package(&app, json!({"name": "gateway fw", "version": "1.0.0", "type": "URL_LIST", "models": [x100], "links": ["https://e.com/a"]})).await;
    create_package(&app, json!({"name": "sensor fw", "version": "1.0.0", "type": "URL_LIST", "models": [s200], "links": ["https://e.com/b"]})).await;
    create_package(&app, json!({"name": "sensor fw", "version": "1.1.0", "type": "URL_LIST", "models": [s200, x100], "links": ["https://e.com/c"]})).await;
    let deprecated = app
        .operator("package_admin")
        .ok(
            "mutation($id: ID!) { deprecatePackage(input: {id: $id}) { package { deprecated } } }",
            json!({"id": a["id"]}),
        )
        .await;
    assert_eq!(deprecated["deprecatePackage"]["package"]["deprecated"], true);

    let count = |filter: Value| {
        let app = &app;
        async move {
            app.operator("viewer")
                .ok("query($f: PackageFilter) { packages(filter: $f) { totalCount } }", json!({"f": filter}))
                .await["packages"]["totalCount"]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(count(json!({"model": x100})).await, 2);
    assert_eq!(count(json!({"model": s200})).await, 2);
    assert_eq!(count(json!({"name": "sensor fw"})).await, 2);
    assert_eq!(count(json!({"version": "1.0.0"})).await, 2);
    assert_eq!(count(json!({"type": "URL_LIST"})).await, 3);
    assert_eq!(count(json!({"deprecated": true})).await, 1);
    assert_eq!(count(json!({"deprecated": false, "model": x100})).await, 1);
    assert_eq!(count(json!({"component": "agent"})).await, 0);
    assert_eq!(count(json!({"component": "firmware"})).await, 3);
    assert_eq!(count(json!({"product": "firmware"})).await, 3, "the deprecated alias filters the same");
    // The mark can be taken back, and it is kept in the holder's tags.
    app.operator("package_admin")
        .ok(
            "mutation($id: ID!) { deprecatePackage(input: {id: $id, deprecated: false}) { package { id } } }",
            json!({"id": a["id"]}),
        )
        .await;
    assert_eq!(count(json!({"deprecated": true})).await, 0);
}

#[tokio::test]
async fn the_index_is_rebuilt_from_the_tags() {
    let app = TestApp::start_unscanned().await;
    let x100 = model(&app, "X100").await;
    let (file_id, _) = app.promoted("fw.bin", b"fw").await;
    let kept = create_package(
        &app,
        json!({"name": "fw", "version": "1.0.0", "type": "URL_LIST", "models": [x100], "files": [file_id]}),
    )
    .await;
    let gone = create_package(
        &app,
        json!({"name": "fw", "version": "0.9.0", "type": "URL_LIST", "models": [x100], "links": ["https://e.com/x"]}),
    )
    .await;
    app.operator("package_admin")
        .ok("mutation($id: ID!) { deprecatePackage(input: {id: $id}) { package { id } } }", json!({"id": kept["id"]}))
        .await;
    app.operator("package_admin")
        .ok("mutation($id: ID!) { deletePackage(input: {id: $id}) { package { id } } }", json!({"id": gone["id"]}))
        .await;
    let query = "{ packages(orderBy: VERSION) { edges { node { id version deprecated models { name } files { name contentId } } } } }";
    let before = app.operator("viewer").ok(query, json!({})).await;

    // Lose the links, then rebuild.
    let db = app.db();
    for table in ["package_file", "package_model"] {
        sea_orm::ConnectionTrait::execute_unprepared(db, &format!("DELETE FROM {table}")).await.unwrap();
    }
    let server = &app.server().app;
    let count = otadepot::service::package::reindex(server, &otadepot::auth::Ctx::system("test")).await.unwrap();
    assert_eq!(count, 2, "both holders are indexed (the deleted one stays deleted)");
    assert_eq!(app.operator("viewer").ok(query, json!({})).await, before);
    assert_eq!(before["packages"]["edges"].as_array().unwrap().len(), 1);
    assert_eq!(before["packages"]["edges"][0]["node"]["deprecated"], true);
}

#[tokio::test]
async fn permissions_for_packages_and_models() {
    let app = TestApp::start().await;
    let x100 = model(&app, "X100").await;
    let input =
        json!({"name": "fw", "version": "1.0.0", "type": "URL_LIST", "models": [x100], "links": ["https://e.com/x"]});
    for role in ["viewer", "device_admin", "deployment_manager"] {
        assert_eq!(app.operator(role).error_code(CREATE_PACKAGE, json!({"i": input})).await, "FORBIDDEN", "{role}");
    }
    assert_eq!(app.operator("package_admin").error_code(CREATE_MODEL, json!({"n": "S1"})).await, "FORBIDDEN");
    // The ExoSense way needs PACKAGE_WRITE besides CONTENT_WRITE.
    app.operator("admin")
        .ok("mutation { createRole(input: {name: \"uploader\", permissions: [CONTENT_WRITE, CONTENT_READ]}) { role { name } } }", json!({}))
        .await;
    let otau = json!({"author": "a", "product": "p", "config_otau": {"version": "1", "name": "n", "type": "URL_LIST",
        "payload": ["https://e.com/x"]}});
    let content = json!({"name": "p.json", "content_type": "application/json", "type": "manifest", "length": 0,
        "tags": [{"name": "otau_info", "value": otau.to_string()}]});
    let before = count_rows(app.db(), "content").await;
    let body = app.operator("uploader").gql(CREATE_CONTENT, json!({"c": content})).await;
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["permission"], "PACKAGE_WRITE");
    assert_eq!(count_rows(app.db(), "content").await, before);
    create_package(&app, input).await;
}

/// `product`, the old name of `component`, still works where it was: on
/// `Package`, in `CreateSoftwarePackageInput` and in `PackageFilter`.
#[tokio::test]
async fn the_old_product_names_still_work_as_deprecated_aliases() {
    let app = TestApp::start_unscanned().await;
    let x100 = model(&app, "X100").await;
    let created = app
        .operator("package_admin")
        .ok(
            "mutation($i: CreateSoftwarePackageInput!) { createSoftwarePackage(input: $i) { package { id contentId component product } } }",
            json!({"i": {"name": "agent", "version": "2.0.0", "type": "URL_LIST", "product": "agent", "models": [x100],
                         "links": ["https://example.com/agent"]}}),
        )
        .await["createSoftwarePackage"]["package"]
        .clone();
    assert_eq!((created["component"].as_str(), created["product"].as_str()), (Some("agent"), Some("agent")));
    let found = app
        .operator("viewer")
        .ok("{ packages(filter: {product: \"agent\"}) { edges { node { id product } } } }", json!({}))
        .await;
    assert_eq!(found["packages"]["edges"][0]["node"]["id"], created["id"]);
    // The schema says which name to use.
    let field = app
        .operator("viewer")
        .ok(
            "{ __type(name: \"Package\") { fields(includeDeprecated: true) { name isDeprecated deprecationReason } } }",
            json!({}),
        )
        .await["__type"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "product")
        .cloned()
        .unwrap();
    assert_eq!(field["isDeprecated"], true);
    assert!(field["deprecationReason"].as_str().unwrap().contains("component"), "{field}");
    // The manifest's holder keeps the ExoSense key in its otau_info tag.
    let tags = app
        .operator("viewer")
        .ok("query($id: ID!) { content(id: $id) { tags { name value } } }", json!({"id": created["contentId"]}))
        .await["content"]["tags"]
        .clone();
    let otau = tags.as_array().unwrap().iter().find(|t| t["name"] == "otau_info").unwrap()["value"].clone();
    let otau: Value = serde_json::from_str(otau.as_str().unwrap()).unwrap();
    assert_eq!(otau["product"], "agent", "{otau}");
}

/// A package made before the rename keeps its component through the
/// migration, and the migration goes down and up again.
#[tokio::test]
async fn packages_made_before_the_rename_keep_their_component() {
    use migration::MigratorTrait;
    let app = TestApp::start_unscanned().await;
    let x100 = model(&app, "X100").await;
    let id = create_package(
        &app,
        json!({"name": "fw", "version": "3.0.0", "type": "URL_LIST", "component": "bootloader", "models": [x100],
               "links": ["https://example.com/bl"]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Back to just before the rename (and whatever came after it).
    let migrations = migration::Migrator::migrations();
    let rename =
        migrations.iter().position(|m| m.name() == "m20261203_000017_rename_package_product_to_component").unwrap();
    migration::Migrator::down(app.db(), Some((migrations.len() - rename) as u32)).await.unwrap();
    let before: i64 =
        crate::support::query_i64(app.db(), "SELECT COUNT(*) AS n FROM package WHERE product = 'bootloader'").await;
    assert_eq!(before, 1, "down: the column is product again");
    migration::Migrator::up(app.db(), None).await.unwrap();
    let after: i64 =
        crate::support::query_i64(app.db(), "SELECT COUNT(*) AS n FROM package WHERE component = 'bootloader'").await;
    assert_eq!(after, 1, "up: the same row, now under component");
    let package =
        app.operator("viewer").ok("query($id: ID!) { package(id: $id) { component } }", json!({"id": id})).await;
    assert_eq!(package["package"]["component"], "bootloader");
}
