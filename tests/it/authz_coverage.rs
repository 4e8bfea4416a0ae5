//! Every Query, Mutation and Subscription field against an explicit table
//! of what it requires. A field missing from the table fails the test; for
//! every field, no token is UNAUTHENTICATED, a token lacking the permission
//! is FORBIDDEN, and the database is unchanged by either.
//!
//! When you add a field: add its row here with an operation that would
//! succeed for an authorized caller (so a denial means something).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::audit::subscription_error_code;
use crate::support::{TestApp, count_rows, error_code};

#[derive(Clone, Copy, Debug)]
enum Root {
    Query,
    Mutation,
    Subscription,
}

#[derive(Clone, Copy, Debug)]
enum Needs {
    /// Any authenticated operator.
    Operator,
    Permission(&'static str),
}

struct Entry {
    root: Root,
    field: &'static str,
    needs: Needs,
    operation: &'static str,
    variables: fn() -> Value,
}

/// An id that names nothing: the authorized call answers NOT_FOUND.
const ZERO: &str = "00000000-0000-7000-8000-000000000000";

fn table() -> Vec<Entry> {
    use Needs::*;
    use Root::*;
    vec![
        Entry { root: Query, field: "me", needs: Operator, operation: "{ me { subject } }", variables: || json!({}) },
        Entry {
            root: Query,
            field: "roles",
            needs: Permission("ROLE_READ"),
            operation: "{ roles { name } }",
            variables: || json!({}),
        },
        Entry {
            root: Query,
            field: "auditEvents",
            needs: Permission("AUDIT_READ"),
            operation: "{ auditEvents { totalCount } }",
            variables: || json!({}),
        },
        Entry {
            root: Query,
            field: "verifyAuditChain",
            needs: Permission("AUDIT_READ"),
            operation: "{ verifyAuditChain { ok } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "createRole",
            needs: Permission("ROLE_ADMIN"),
            operation: "mutation { createRole(input: {name: \"fresh\", permissions: [AUDIT_READ]}) { role { name } } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "updateRole",
            needs: Permission("ROLE_ADMIN"),
            operation: "mutation { updateRole(input: {name: \"victim\", permissions: [ROLE_ADMIN]}) { role { name } } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "deleteRole",
            needs: Permission("ROLE_ADMIN"),
            operation: "mutation { deleteRole(input: {name: \"victim\"}) { role { name } } }",
            variables: || json!({}),
        },
        Entry {
            root: Query,
            field: "content",
            needs: Permission("CONTENT_READ"),
            operation: "query($id: ID!) { content(id: $id) { id } }",
            variables: || json!({"id": "00000000-0000-7000-8000-000000000000"}),
        },
        Entry {
            root: Query,
            field: "contents",
            needs: Permission("CONTENT_READ"),
            operation: "{ contents { totalCount } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "createContent",
            needs: Permission("CONTENT_WRITE"),
            operation: "mutation { createContent(content: {name: \"a\", content_type: \"x\", type: \"firmware\", length: 1}) { id } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "uploadContent",
            needs: Permission("CONTENT_WRITE"),
            // Over the upload limit: an authorized caller gets PAYLOAD_TOO_LARGE
            // before any file is asked for (a JSON request carries none).
            operation: "mutation { uploadContent(input: {name: \"a\", type: \"firmware\", contentType: \"x\", length: 1099511627776}, file: \"0\") { content { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "setContentTags",
            needs: Permission("CONTENT_WRITE"),
            operation: "mutation { setContentTags(input: {id: \"00000000-0000-7000-8000-000000000000\", tags: []}) { content { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "deleteContent",
            needs: Permission("CONTENT_WRITE"),
            operation: "mutation { deleteContent(input: {id: \"00000000-0000-7000-8000-000000000000\"}) { content { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "rescanContent",
            needs: Permission("CONTENT_WRITE"),
            operation: "mutation { rescanContent(input: {id: \"00000000-0000-7000-8000-000000000000\"}) { content { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "promoteContent",
            needs: Permission("CONTENT_PROMOTE"),
            operation: "mutation { promoteContent(input: {id: \"00000000-0000-7000-8000-000000000000\"}) { content { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Subscription,
            field: "contentUpdated",
            needs: Permission("CONTENT_READ"),
            operation: "subscription { contentUpdated(id: \"00000000-0000-7000-8000-000000000000\") { state } }",
            variables: || json!({}),
        },
        Entry {
            root: Query,
            field: "deviceModel",
            needs: Permission("DEVICE_READ"),
            operation: "query($id: ID!) { deviceModel(id: $id) { id } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "deviceModels",
            needs: Permission("DEVICE_READ"),
            operation: "{ deviceModels { totalCount } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "createDeviceModel",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation { createDeviceModel(input: {name: \"fresh-model\"}) { deviceModel { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "updateDeviceModel",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation($id: ID!) { updateDeviceModel(input: {id: $id, name: \"renamed\"}) { deviceModel { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "deleteDeviceModel",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation($id: ID!) { deleteDeviceModel(input: {id: $id}) { deviceModel { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "package",
            needs: Permission("PACKAGE_READ"),
            operation: "query($id: ID!) { package(id: $id) { id } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "packages",
            needs: Permission("PACKAGE_READ"),
            operation: "{ packages { totalCount } }",
            variables: || json!({}),
        },
        Entry {
            root: Query,
            field: "packageManifest",
            needs: Permission("PACKAGE_READ"),
            operation: "query($id: ID!) { packageManifest(id: $id) }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "signingKeys",
            needs: Permission("PACKAGE_READ"),
            operation: "{ signingKeys { kid } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "createSoftwarePackage",
            needs: Permission("PACKAGE_WRITE"),
            operation: "mutation { createSoftwarePackage(input: {name: \"fw\", version: \"9.9.9\", type: \"URL_LIST\", models: [\"M1\"], links: [\"https://example.com/fw\"]}) { package { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "deprecatePackage",
            needs: Permission("PACKAGE_WRITE"),
            operation: "mutation($id: ID!) { deprecatePackage(input: {id: $id}) { package { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "setPackageModels",
            needs: Permission("PACKAGE_WRITE"),
            operation: "mutation($id: ID!) { setPackageModels(input: {id: $id, models: [\"M1\"]}) { package { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "deletePackage",
            needs: Permission("PACKAGE_WRITE"),
            operation: "mutation($id: ID!) { deletePackage(input: {id: $id}) { package { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "device",
            needs: Permission("DEVICE_READ"),
            operation: "query($id: ID!) { device(id: $id) { id } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "deviceByEndpointId",
            needs: Permission("DEVICE_READ"),
            operation: "{ deviceByEndpointId(endpointId: \"nobody\") { id } }",
            variables: || json!({}),
        },
        Entry {
            root: Query,
            field: "devices",
            needs: Permission("DEVICE_READ"),
            operation: "{ devices { totalCount } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "registerDevice",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation { registerDevice(input: {endpointId: \"fresh-device\", model: \"M1\"}) { secret } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "registerDevices",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation { registerDevices(input: {devices: [{endpointId: \"fresh-bulk\", model: \"M1\"}]}) { count } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "rotateDeviceCredential",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation($id: ID!) { rotateDeviceCredential(input: {id: $id}) { secret } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "decommissionDevice",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation($id: ID!) { decommissionDevice(input: {id: $id}) { device { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "deviceGroup",
            needs: Permission("DEVICE_READ"),
            operation: "query($id: ID!) { deviceGroup(id: $id) { id } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "deviceGroups",
            needs: Permission("DEVICE_READ"),
            operation: "{ deviceGroups { totalCount } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "createDeviceGroup",
            needs: Permission("GROUP_WRITE"),
            operation: "mutation { createDeviceGroup(input: {name: \"fresh-group\", model: \"M1\"}) { deviceGroup { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "updateDeviceGroup",
            needs: Permission("GROUP_WRITE"),
            operation: "mutation($id: ID!) { updateDeviceGroup(input: {id: $id, name: \"renamed\"}) { deviceGroup { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "deleteDeviceGroup",
            needs: Permission("GROUP_WRITE"),
            operation: "mutation($id: ID!) { deleteDeviceGroup(input: {id: $id}) { deviceGroup { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "addGroupMembers",
            needs: Permission("GROUP_WRITE"),
            operation: "mutation($id: ID!) { addGroupMembers(input: {group: $id, devices: [\"x\"]}) { deviceGroup { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "removeGroupMembers",
            needs: Permission("GROUP_WRITE"),
            operation: "mutation($id: ID!) { removeGroupMembers(input: {group: $id, devices: [\"x\"]}) { deviceGroup { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "enrollmentTokens",
            needs: Permission("DEVICE_READ"),
            operation: "{ enrollmentTokens { totalCount } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "createEnrollmentToken",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation { createEnrollmentToken(input: {name: \"factory\"}) { token } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "revokeEnrollmentToken",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation($id: ID!) { revokeEnrollmentToken(input: {id: $id}) { enrollmentToken { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "approveDevices",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation($id: ID!) { approveDevices(input: {devices: [$id]}) { devices { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "rejectDevices",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation($id: ID!) { rejectDevices(input: {devices: [$id]}) { devices { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "setDeviceGateway",
            needs: Permission("DEVICE_WRITE"),
            operation: "mutation($id: ID!) { setDeviceGateway(input: {device: $id}) { device { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "deployment",
            needs: Permission("DEPLOYMENT_READ"),
            operation: "query($id: ID!) { deployment(id: $id) { id } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "deployments",
            needs: Permission("DEPLOYMENT_READ"),
            operation: "{ deployments { totalCount } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "applyPackage",
            needs: Permission("DEPLOYMENT_WRITE"),
            operation: "mutation($id: ID!) { applyPackage(input: {package: $id, devices: [\"x\"]}) { deployment { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "pauseDeployment",
            needs: Permission("DEPLOYMENT_WRITE"),
            operation: "mutation($id: ID!) { pauseDeployment(input: {id: $id}) { deployment { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "resumeDeployment",
            needs: Permission("DEPLOYMENT_WRITE"),
            operation: "mutation($id: ID!) { resumeDeployment(input: {id: $id}) { deployment { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "cancelDeployment",
            needs: Permission("DEPLOYMENT_WRITE"),
            operation: "mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "releaseInstall",
            needs: Permission("DEPLOYMENT_WRITE"),
            operation: "mutation($id: ID!) { releaseInstall(input: {id: $id}) { deployment { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "setGroupPackage",
            needs: Permission("DEPLOYMENT_WRITE"),
            operation: "mutation($id: ID!) { setGroupPackage(input: {group: $id}) { deployment { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Subscription,
            field: "deploymentProgress",
            needs: Permission("DEPLOYMENT_READ"),
            operation: "subscription { deploymentProgress(id: \"00000000-0000-7000-8000-000000000000\") { deployment { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Query,
            field: "command",
            needs: Permission("COMMAND_READ"),
            operation: "query($id: ID!) { command(id: $id) { id } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Query,
            field: "commands",
            needs: Permission("COMMAND_READ"),
            operation: "{ commands { totalCount } }",
            variables: || json!({}),
        },
        Entry {
            root: Query,
            field: "commandBatch",
            needs: Permission("COMMAND_READ"),
            operation: "query($id: ID!) { commandBatch(id: $id) { id } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "sendCommand",
            needs: Permission("COMMAND_SEND"),
            operation: "mutation { sendCommand(input: {devices: [\"authz-d1\"], name: \"REBOOT\"}) { batchId } }",
            variables: || json!({}),
        },
        Entry {
            root: Mutation,
            field: "cancelCommand",
            needs: Permission("COMMAND_SEND"),
            operation: "mutation($id: ID!) { cancelCommand(input: {id: $id}) { command { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Mutation,
            field: "cancelCommandBatch",
            needs: Permission("COMMAND_SEND"),
            operation: "mutation($id: ID!) { cancelCommandBatch(input: {id: $id}) { batch { id } } }",
            variables: || json!({"id": ZERO}),
        },
        Entry {
            root: Subscription,
            field: "commandUpdated",
            needs: Permission("COMMAND_READ"),
            operation: "subscription { commandUpdated(batch: \"00000000-0000-7000-8000-000000000000\") { batch { id } } }",
            variables: || json!({}),
        },
        Entry {
            root: Subscription,
            field: "auditEventAdded",
            needs: Permission("AUDIT_READ"),
            operation: "subscription { auditEventAdded { seq } }",
            variables: || json!({}),
        },
    ]
}

async fn schema_fields(app: &TestApp) -> BTreeSet<String> {
    let data = app
        .anonymous()
        .ok(
            "{ __schema { queryType { fields { name } } mutationType { fields { name } } subscriptionType { fields { name } } } }",
            json!({}),
        )
        .await;
    let mut fields = BTreeSet::new();
    for (root, key) in [("Query", "queryType"), ("Mutation", "mutationType"), ("Subscription", "subscriptionType")] {
        for field in data["__schema"][key]["fields"].as_array().into_iter().flatten() {
            fields.insert(format!("{root}.{}", field["name"].as_str().unwrap()));
        }
    }
    fields
}

/// Tables a denied call must leave alone; add new ones here.
const TABLES: &[&str] = &[
    "role",
    "audit_event",
    "job",
    "content",
    "content_tag",
    "device_model",
    "package",
    "package_model",
    "package_file",
    "device",
    "device_attribute",
    "device_installed",
    "device_group",
    "device_group_member",
    "enrollment_token",
    "deployment",
    "device_update",
    "installation",
    "command",
];

async fn snapshot(app: &TestApp) -> (Vec<i64>, Value) {
    let roles = app.operator("admin").ok("{ roles { name permissions description } }", json!({})).await;
    let mut counts = Vec::new();
    for table in TABLES {
        counts.push(if *table == "job" {
            // The periodic jobs come and go on their own schedule.
            crate::support::query_i64(
                app.db(),
                "SELECT COUNT(*) AS n FROM job WHERE kind NOT IN ('jobs.prune', 'commands.expire', 'content.release_abandoned_uploads')",
            )
            .await
        } else {
            count_rows(app.db(), table).await
        });
    }
    (counts, roles)
}

#[tokio::test]
async fn every_field_requires_its_permission() {
    let app = TestApp::start().await;
    let entries = table();

    let in_table: BTreeSet<String> = entries.iter().map(|e| format!("{:?}.{}", e.root, e.field)).collect();
    let in_schema = schema_fields(&app).await;
    let missing: Vec<_> = in_schema.difference(&in_table).collect();
    assert!(missing.is_empty(), "fields without a row in the authorization table: {missing:?}");
    let stale: Vec<_> = in_table.difference(&in_schema).collect();
    assert!(stale.is_empty(), "rows for fields that no longer exist: {stale:?}");

    let all: Vec<String> = app
        .anonymous()
        .ok("{ __type(name: \"Permission\") { enumValues { name } } }", json!({}))
        .await["__type"]["enumValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    let admin = app.operator("admin");
    admin
        .ok(
            "mutation { createRole(input: {name: \"victim\", permissions: [AUDIT_READ]}) { role { name } } }",
            json!({}),
        )
        .await;
    // What the package rows refer to.
    admin.ok("mutation { createDeviceModel(input: {name: \"M1\"}) { deviceModel { id } } }", json!({})).await;
    // What a command is sent to.
    admin
        .ok("mutation { registerDevice(input: {endpointId: \"authz-d1\", model: \"M1\"}) { secret } }", json!({}))
        .await;
    for permission in &all {
        let others: Vec<&String> = all.iter().filter(|p| *p != permission).collect();
        admin
            .ok(
                "mutation($name: String!, $p: [Permission!]!) { createRole(input: {name: $name, permissions: $p}) { role { name } } }",
                json!({"name": format!("all-but-{}", permission.to_lowercase().replace('_', "-")), "p": others}),
            )
            .await;
    }

    for entry in &entries {
        let label = format!("{:?}.{}", entry.root, entry.field);
        let before = snapshot(&app).await;
        let lacking = match entry.needs {
            Needs::Operator => None,
            Needs::Permission(p) => {
                assert!(all.iter().any(|a| a == p), "{label}: {p} is not a Permission");
                Some(app.token_for("lacking", &[&format!("all-but-{}", p.to_lowercase().replace('_', "-"))]))
            }
        };
        match entry.root {
            Root::Subscription => {
                assert_eq!(subscription_error_code(&app, None, entry.operation).await, "UNAUTHENTICATED", "{label}");
                if let Some(token) = &lacking {
                    assert_eq!(
                        subscription_error_code(&app, Some(token), entry.operation).await,
                        "FORBIDDEN",
                        "{label}"
                    );
                }
            }
            Root::Query | Root::Mutation => {
                let body = app.anonymous().gql(entry.operation, (entry.variables)()).await;
                assert_eq!(error_code(&body), "UNAUTHENTICATED", "{label}: {body}");
                if let Some(token) = &lacking {
                    let body = app.with_token(token).gql(entry.operation, (entry.variables)()).await;
                    assert_eq!(error_code(&body), "FORBIDDEN", "{label}: {body}");
                }
            }
        }
        assert_eq!(snapshot(&app).await, before, "{label}: a denied call changed the database");

        // And the operation is a real one: an admin gets no authorization error.
        if !matches!(entry.root, Root::Subscription) {
            let body = admin.gql(entry.operation, (entry.variables)()).await;
            if let Some(errors) = body.get("errors") {
                let code = errors[0]["extensions"]["code"].as_str().unwrap_or_default();
                assert!(
                    code != "FORBIDDEN" && code != "UNAUTHENTICATED" && code != "BAD_USER_INPUT",
                    "{label}: {body}"
                );
            }
        }
    }
}
