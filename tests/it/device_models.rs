//! Device models: create, update, delete, list; names unique.

use serde_json::{Value, json};

use crate::support::{TestApp, count_rows, error_code};

const CREATE: &str = "mutation($i: CreateDeviceModelInput!) { createDeviceModel(input: $i) {
    deviceModel { id name manufacturer description createdBy } } }";
const UPDATE: &str = "mutation($i: UpdateDeviceModelInput!) { updateDeviceModel(input: $i) {
    deviceModel { id name manufacturer description } } }";
const DELETE: &str = "mutation($id: ID!) { deleteDeviceModel(input: {id: $id}) { deviceModel { name } } }";

async fn create(app: &TestApp, input: Value) -> Value {
    app.operator("device_admin").ok(CREATE, json!({"i": input})).await["createDeviceModel"]["deviceModel"].clone()
}

#[tokio::test]
async fn models_are_created_changed_listed_and_deleted_with_audit() {
    let app = TestApp::start().await;
    let x100 = create(&app, json!({"name": " X100-B ", "manufacturer": "Acme", "description": "gateway"})).await;
    assert_eq!(x100["name"], "X100-B", "trimmed");
    assert_eq!(x100["manufacturer"], "Acme");
    assert_eq!(x100["createdBy"], "device_admin-user");
    for name in ["S200", "A1"] {
        create(&app, json!({"name": name})).await;
    }

    let changed = app
        .operator("device_admin")
        .ok(UPDATE, json!({"i": {"id": x100["id"], "name": "X100-C", "manufacturer": ""}}))
        .await["updateDeviceModel"]["deviceModel"]
        .clone();
    assert_eq!(changed["name"], "X100-C");
    assert_eq!(changed["manufacturer"], Value::Null, "an empty string clears it");
    assert_eq!(changed["description"], "gateway", "untouched");

    let page = |after: Value| {
        let app = &app;
        async move {
            app.operator("viewer")
                .ok(
                    "query($a: String) { deviceModels(first: 2, after: $a) { totalCount pageInfo { hasNextPage endCursor } edges { node { name } } } }",
                    json!({"a": after}),
                )
                .await["deviceModels"]
                .clone()
        }
    };
    let first = page(Value::Null).await;
    assert_eq!(first["totalCount"], 3);
    assert_eq!(first["edges"], json!([{"node": {"name": "A1"}}, {"node": {"name": "S200"}}]));
    let second = page(first["pageInfo"]["endCursor"].clone()).await;
    assert_eq!(second["edges"], json!([{"node": {"name": "X100-C"}}]));
    assert_eq!(second["pageInfo"]["hasNextPage"], false);

    let one =
        app.operator("viewer").ok("query($id: ID!) { deviceModel(id: $id) { name } }", json!({"id": x100["id"]})).await;
    assert_eq!(one["deviceModel"]["name"], "X100-C");

    app.operator("device_admin").ok(DELETE, json!({"id": x100["id"]})).await;
    assert_eq!(
        app.operator("viewer")
            .error_code("query($id: ID!) { deviceModel(id: $id) { name } }", json!({"id": x100["id"]}))
            .await,
        "NOT_FOUND"
    );

    let actions = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"device_model.*\"}) { edges { node { action } } } }", json!({}))
        .await["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["action"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(actions.iter().filter(|a| *a == "device_model.create").count(), 3);
    assert!(actions.contains(&"device_model.update".to_owned()) && actions.contains(&"device_model.delete".to_owned()));
}

#[tokio::test]
async fn names_are_unique_and_validated() {
    let app = TestApp::start().await;
    let a = create(&app, json!({"name": "X100"})).await;
    let b = create(&app, json!({"name": "S200"})).await;
    let op = app.operator("device_admin");
    assert_eq!(op.error_code(CREATE, json!({"i": {"name": "X100"}})).await, "CONFLICT");
    assert_eq!(op.error_code(UPDATE, json!({"i": {"id": b["id"], "name": "X100"}})).await, "CONFLICT");
    for name in ["", "   ", "bad\nname", &"x".repeat(129)] {
        let body = op.gql(CREATE, json!({"i": {"name": name}})).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{name:?}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "name");
    }
    assert_eq!(op.error_code(UPDATE, json!({"i": {"id": "nope", "name": "Y"}})).await, "BAD_USER_INPUT");
    assert_eq!(op.error_code(DELETE, json!({"id": "00000000-0000-7000-8000-000000000000"})).await, "NOT_FOUND");
    assert_eq!(count_rows(app.db(), "device_model").await, 2);
    assert_eq!(app.operator("viewer").error_code(DELETE, json!({"id": a["id"]})).await, "FORBIDDEN");
}
