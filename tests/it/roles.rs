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

const ROLES: &str = "{ roles { name permissions description } }";

fn role_named<'a>(roles: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    roles["roles"].as_array().unwrap().iter().find(|r| r["name"] == name)
}

#[tokio::test]
async fn a_role_admin_grants_only_what_it_holds_and_refusals_are_audited() {
    let app = TestApp::start().await;
    let admin = app.operator("admin");
    let keeper_permissions = json!(["DEVICE_READ", "ROLE_READ", "ROLE_ADMIN"]);
    admin.ok(CREATE, json!({"input": {"name": "role-keeper", "permissions": keeper_permissions}})).await;
    admin.ok(CREATE, json!({"input": {"name": "ops", "permissions": ["AUDIT_READ"]}})).await;
    let keeper = app.with_token(&app.token_for("keeper", &["role-keeper"]));
    let roles_before = admin.ok(ROLES, json!({})).await;

    // The escalation: its own role, with four permissions it lacks.
    let escalation = json!({"input": {"name": "role-keeper", "permissions": ["DEVICE_READ", "ROLE_READ", "ROLE_ADMIN",
        "CONTENT_PROMOTE", "DEVICE_WRITE", "AUDIT_READ", "PACKAGE_WRITE"]}});
    assert_eq!(keeper.error_code(UPDATE, escalation).await, "FORBIDDEN");
    // Nor through a role it does not hold, nor a new one.
    let body =
        keeper.gql(UPDATE, json!({"input": {"name": "ops", "permissions": ["AUDIT_READ", "CONTENT_PROMOTE"]}})).await;
    assert_eq!(crate::support::error_code(&body), "FORBIDDEN", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["permission"], "CONTENT_PROMOTE");
    let body = keeper.gql(CREATE, json!({"input": {"name": "sidekick", "permissions": ["DEVICE_WRITE"]}})).await;
    assert_eq!(body["errors"][0]["extensions"]["permission"], "DEVICE_WRITE", "{body}");
    // A role it holds does not change at all, not even its description.
    assert_eq!(
        keeper.error_code(UPDATE, json!({"input": {"name": "role-keeper", "description": "mine"}})).await,
        "FORBIDDEN"
    );
    assert_eq!(keeper.error_code(DELETE, json!({"input": {"name": "role-keeper"}})).await, "FORBIDDEN");

    assert_eq!(admin.ok(ROLES, json!({})).await, roles_before, "a refused change changes no role");
    assert_eq!(keeper.ok("{ me { permissions } }", json!({})).await["me"]["permissions"], keeper_permissions);

    // Every refusal is in the audit trail, with what was asked for.
    let events = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {objectKind: \"role\"}) { edges { node { action objectId actor { id } details } } } }", json!({}))
        .await;
    let denied: Vec<(String, String)> = events["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["node"])
        .filter(|n| n["action"].as_str().unwrap().ends_with("_denied"))
        .map(|n| (n["action"].as_str().unwrap().to_owned(), n["objectId"].as_str().unwrap().to_owned()))
        .collect();
    let expected = [
        ("role.delete_denied", "role-keeper"),
        ("role.update_denied", "role-keeper"),
        ("role.create_denied", "sidekick"),
        ("role.update_denied", "ops"),
        ("role.update_denied", "role-keeper"),
    ];
    assert_eq!(denied, expected.map(|(a, o)| (a.to_owned(), o.to_owned())), "{events}");
    let first = events["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["node"])
        .rfind(|n| n["action"] == "role.update_denied")
        .unwrap();
    assert_eq!(first["actor"]["id"], "keeper");
    assert_eq!(first["details"]["not_held"], json!(["CONTENT_PROMOTE", "PACKAGE_WRITE", "DEVICE_WRITE", "AUDIT_READ"]));

    // What it holds, it may grant: to a role it does not hold (keeping a
    // permission of that role it lacks), or to a new one.
    let data = keeper.ok(UPDATE, json!({"input": {"name": "ops", "permissions": ["AUDIT_READ", "DEVICE_READ"]}})).await;
    assert_eq!(data["updateRole"]["role"]["permissions"], json!(["DEVICE_READ", "AUDIT_READ"]));
    keeper.ok(CREATE, json!({"input": {"name": "reader", "permissions": ["DEVICE_READ"]}})).await;
    keeper.ok(DELETE, json!({"input": {"name": "reader"}})).await;
    // An admin may change a role it holds (other than admin itself).
    let both = app.with_token(&app.token_for("boss", &["admin", "role-keeper"]));
    both.ok(UPDATE, json!({"input": {"name": "role-keeper", "description": "changed by an admin"}})).await;
}

#[tokio::test]
async fn the_wildcard_grants_every_permission_to_admin_alone() {
    use sea_orm::ConnectionTrait;
    let app = TestApp::start().await;
    let admin = app.operator("admin");
    admin.ok(CREATE, json!({"input": {"name": "sneaky", "permissions": ["AUDIT_READ"]}})).await;
    // What only a database edit (or a bug) could store.
    app.db()
        .execute_unprepared(
            "UPDATE role SET permissions = '[\"*\", \"AUDIT_READ\"]' WHERE name IN ('sneaky', 'viewer')",
        )
        .await
        .unwrap();

    let sneaky = app.with_token(&app.token_for("s", &["sneaky", "viewer"]));
    assert_eq!(sneaky.ok("{ me { permissions } }", json!({})).await["me"]["permissions"], json!(["AUDIT_READ"]));
    let roles = admin.ok(ROLES, json!({})).await;
    assert_eq!(role_named(&roles, "sneaky").unwrap()["permissions"], json!(["AUDIT_READ"]));
    assert_eq!(role_named(&roles, "admin").unwrap()["permissions"].as_array().unwrap().len(), 15);
}
