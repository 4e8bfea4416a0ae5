//! Roles: built-in ones, custom ones, and their rules.

use serde_json::json;

use crate::support::{TestApp, count_rows};

const CREATE: &str = "mutation($input: CreateRoleInput!) { createRole(input: $input) { role { id name description permissions builtIn } } }";
const UPDATE: &str =
    "mutation($input: UpdateRoleInput!) { updateRole(input: $input) { role { name description permissions } } }";
const DELETE: &str = "mutation($input: DeleteRoleInput!) { deleteRole(input: $input) { role { name } } }";

#[tokio::test]
async fn built_in_roles_are_seeded() {
    let app = TestApp::start().await;
    let data = app.operator("auditor").ok("{ roles { name builtIn permissions } }", json!({})).await;
    let names: Vec<&str> = data["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "auditor", "deployment_manager", "device_admin", "package_admin", "viewer"]);
    let admin = &data["roles"][0];
    assert_eq!(admin["builtIn"], true);
    assert_eq!(admin["permissions"].as_array().unwrap().len(), 15, "admin holds every permission");
    let package_admin = data["roles"].as_array().unwrap().iter().find(|r| r["name"] == "package_admin").unwrap();
    for p in ["CONTENT_WRITE", "CONTENT_PROMOTE", "PACKAGE_WRITE", "PACKAGE_READ"] {
        assert!(package_admin["permissions"].as_array().unwrap().contains(&json!(p)), "{p}");
    }
}

#[tokio::test]
async fn custom_roles_are_created_updated_and_deleted_with_audit_events() {
    let app = TestApp::start().await;
    let admin = app.operator("admin");
    let data = admin
        .ok(CREATE, json!({"input": {"name": "release-bot", "description": "CI", "permissions": ["CONTENT_WRITE", "CONTENT_READ", "CONTENT_WRITE"]}}))
        .await;
    let role = &data["createRole"]["role"];
    assert_eq!(role["builtIn"], false);
    assert_eq!(role["permissions"], json!(["CONTENT_READ", "CONTENT_WRITE"]), "deduplicated and ordered");

    // A token naming the new role gets its permissions at once.
    let bot = app.with_token(&app.token_for("ci", &["release-bot"]));
    let me = bot.ok("{ me { permissions } }", json!({})).await;
    assert_eq!(me["me"]["permissions"], json!(["CONTENT_READ", "CONTENT_WRITE"]));

    let data = admin.ok(UPDATE, json!({"input": {"name": "release-bot", "permissions": ["AUDIT_READ"]}})).await;
    assert_eq!(data["updateRole"]["role"]["permissions"], json!(["AUDIT_READ"]));
    assert_eq!(data["updateRole"]["role"]["description"], "CI", "untouched when not given");
    let me = bot.ok("{ me { permissions } }", json!({})).await;
    assert_eq!(me["me"]["permissions"], json!(["AUDIT_READ"]));

    admin.ok(DELETE, json!({"input": {"name": "release-bot"}})).await;
    let me = bot.ok("{ me { permissions } }", json!({})).await;
    assert_eq!(me["me"]["permissions"], json!([]));

    let events = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {objectKind: \"role\", objectId: \"release-bot\"}) { edges { node { action actor { kind id } details } } } }", json!({}))
        .await;
    let actions: Vec<&str> = events["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["role.delete", "role.update", "role.create"]);
    let update = &events["auditEvents"]["edges"][1]["node"];
    assert_eq!(update["actor"], json!({"kind": "user", "id": "admin-user"}));
    assert_eq!(update["details"]["permissions_before"], json!(["CONTENT_READ", "CONTENT_WRITE"]));
}

#[tokio::test]
async fn role_rules_are_enforced_and_leave_nothing_behind() {
    let app = TestApp::start().await;
    let admin = app.operator("admin");
    admin.ok(CREATE, json!({"input": {"name": "ops", "permissions": ["AUDIT_READ"]}})).await;
    let roles_before = count_rows(app.db(), "role").await;
    let events_before = count_rows(app.db(), "audit_event").await;

    let cases = [
        (CREATE, json!({"input": {"name": "ops", "permissions": ["AUDIT_READ"]}}), "CONFLICT"),
        (CREATE, json!({"input": {"name": "Bad Name", "permissions": ["AUDIT_READ"]}}), "BAD_USER_INPUT"),
        (CREATE, json!({"input": {"name": "x", "permissions": ["AUDIT_READ"]}}), "BAD_USER_INPUT"),
        (CREATE, json!({"input": {"name": "empty", "permissions": []}}), "BAD_USER_INPUT"),
        (CREATE, json!({"input": {"name": "typo", "permissions": ["AUDIT_REED"]}}), "BAD_USER_INPUT"),
        (
            CREATE,
            json!({"input": {"name": "long", "description": "d".repeat(501), "permissions": ["AUDIT_READ"]}}),
            "BAD_USER_INPUT",
        ),
        (UPDATE, json!({"input": {"name": "admin", "permissions": ["AUDIT_READ"]}}), "INVALID_STATE"),
        (UPDATE, json!({"input": {"name": "viewer", "permissions": []}}), "BAD_USER_INPUT"),
        (UPDATE, json!({"input": {"name": "nobody", "permissions": ["AUDIT_READ"]}}), "NOT_FOUND"),
        (DELETE, json!({"input": {"name": "viewer"}}), "INVALID_STATE"),
        (DELETE, json!({"input": {"name": "admin"}}), "INVALID_STATE"),
        (DELETE, json!({"input": {"name": "nobody"}}), "NOT_FOUND"),
    ];
    for (query, variables, code) in cases {
        let body = admin.gql(query, variables.clone()).await;
        assert_eq!(crate::support::error_code(&body), code, "{variables}: {body}");
    }
    let body = admin.gql(CREATE, json!({"input": {"name": "Bad Name", "permissions": ["AUDIT_READ"]}})).await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "name");

    assert_eq!(count_rows(app.db(), "role").await, roles_before);
    assert_eq!(count_rows(app.db(), "audit_event").await, events_before);

    // Built-in roles other than admin can change (but not be emptied).
    let data = admin.ok(UPDATE, json!({"input": {"name": "viewer", "permissions": ["DEVICE_READ"]}})).await;
    assert_eq!(data["updateRole"]["role"]["permissions"], json!(["DEVICE_READ"]));
}
