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
            field: "cancelDeviceUpdate",
            needs: Permission("DEPLOYMENT_WRITE"),
            operation: "mutation($id: ID!) { cancelDeviceUpdate(input: {id: $id}) { deviceUpdate { id } } }",
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
                "SELECT COUNT(*) AS n FROM job WHERE kind NOT IN ('jobs.prune', 'command.expire', 'content.release_abandoned_uploads')",
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

// ---------------------------------------------------------------------------
// Nested fields: a type's read permission belongs to the type.
//
// Every object type has an area (the read permission of its root queries)
// or none (the roots, mutation payloads, `PageInfo`, ...). A field whose
// type is an object of an area other than its parent's (a payload has
// none) is a cross-area field: it must be nullable, and have a row below
// that runs it with a role holding the parent's permission but not the
// child's. A new object type, or a new cross-area field, fails the test
// until it is classified here.
// ---------------------------------------------------------------------------

/// The area of every object type: `Some(read permission)`, or `None` for
/// types of no area of their own.
fn type_area(name: &str) -> Option<Option<&'static str>> {
    Some(match name {
        "Query" | "Mutation" | "Subscription" | "PageInfo" | "Me" | "ContentUpload" | "SkippedDevice" | "SkipCount" => {
            None
        }
        _ if name.ends_with("Payload") => None,
        "Content" | "ContentConnection" | "ContentEdge" | "Tag" => Some("CONTENT_READ"),
        "Package" | "PackageConnection" | "PackageEdge" | "PackageFile" | "SigningKey" => Some("PACKAGE_READ"),
        "Device"
        | "DeviceConnection"
        | "DeviceEdge"
        | "Attribute"
        | "InstalledVersion"
        | "Installation"
        | "DeviceModel"
        | "DeviceModelConnection"
        | "DeviceModelEdge"
        | "DeviceGroup"
        | "DeviceGroupConnection"
        | "DeviceGroupEdge"
        | "DeviceGroupFilter"
        | "AttributeFilter"
        | "InstalledVersionFilter"
        | "EnrollmentToken"
        | "EnrollmentTokenConnection"
        | "EnrollmentTokenEdge" => Some("DEVICE_READ"),
        "Deployment"
        | "DeploymentConnection"
        | "DeploymentEdge"
        | "DeviceUpdate"
        | "DeviceUpdateConnection"
        | "DeviceUpdateEdge"
        | "RolloutPolicy"
        | "UpdateCounts"
        | "DeploymentProgress"
        | "MaintenanceWindow"
        | "MaintenanceWindowState" => Some("DEPLOYMENT_READ"),
        "Command" | "CommandConnection" | "CommandEdge" | "CommandBatch" | "CommandCounts" | "CommandBatchUpdate" => {
            Some("COMMAND_READ")
        }
        "AuditEvent"
        | "AuditEventConnection"
        | "AuditEventEdge"
        | "AuditActor"
        | "AuditChainVerification"
        | "BrokenAuditLink" => Some("AUDIT_READ"),
        "Role" => Some("ROLE_READ"),
        _ => return None,
    })
}

/// The objects the nested operations read or change.
struct Fixture {
    model: String,
    device: String,
    group: String,
    package: String,
    deployment: String,
    /// One deployment each for the restricted caller and for the admin.
    cancellable: [String; 2],
    /// One device update each, for `cancelDeviceUpdate`.
    cancellable_updates: [String; 2],
    content: String,
    commands: [String; 2],
    batches: [String; 2],
    enrollment_tokens: [String; 2],
    pending: [String; 2],
}

struct Nested {
    /// `Type.field`.
    field: &'static str,
    /// What the restricted caller's role holds: the parent's permission
    /// (for a payload, its mutation's), never the child's.
    grants: &'static [&'static str],
    operation: &'static str,
    /// For the restricted caller (0), then the admin (1).
    variables: fn(&Fixture, usize) -> Value,
    /// Where the field is in `data`, dot-separated (numbers are indices).
    path: &'static str,
}

fn nested_table() -> Vec<Nested> {
    vec![
        Nested {
            field: "Command.device",
            grants: &["COMMAND_READ"],
            operation: "query($id: ID!) { command(id: $id) { id device { endpointId serial attributes { key value } } } }",
            variables: |f, _| json!({"id": f.commands[0]}),
            path: "command.device",
        },
        Nested {
            field: "DeviceUpdate.device",
            grants: &["DEPLOYMENT_READ"],
            operation: "query($id: ID!) { deployment(id: $id) { deviceUpdates { edges { node { state device { endpointId } } } } } }",
            variables: |f, _| json!({"id": f.deployment}),
            path: "deployment.deviceUpdates.edges.0.node.device",
        },
        Nested {
            field: "Device.updates",
            grants: &["DEVICE_READ"],
            operation: "query($id: ID!) { device(id: $id) { endpointId updates { totalCount } } }",
            variables: |f, _| json!({"id": f.device}),
            path: "device.updates",
        },
        Nested {
            field: "Device.commands",
            grants: &["DEVICE_READ"],
            operation: "query($id: ID!) { device(id: $id) { endpointId commands { totalCount } } }",
            variables: |f, _| json!({"id": f.device}),
            path: "device.commands",
        },
        Nested {
            field: "Package.models",
            grants: &["PACKAGE_READ"],
            operation: "query($id: ID!) { package(id: $id) { name models { name } } }",
            variables: |f, _| json!({"id": f.package}),
            path: "package.models",
        },
        Nested {
            field: "RolePayload.role",
            grants: &["ROLE_ADMIN"],
            operation: "mutation($n: String!) { createRole(input: {name: $n, permissions: [ROLE_ADMIN]}) { role { name } } }",
            variables: |_, run| json!({"n": format!("nested-role-{run}")}),
            path: "createRole.role",
        },
        Nested {
            field: "ContentPayload.content",
            grants: &["CONTENT_WRITE"],
            operation: "mutation($id: ID!) { setContentTags(input: {id: $id, tags: []}) { content { id name } } }",
            variables: |f, _| json!({"id": f.content}),
            path: "setContentTags.content",
        },
        Nested {
            field: "DeviceModelPayload.deviceModel",
            grants: &["DEVICE_WRITE"],
            operation: "mutation($id: ID!) { updateDeviceModel(input: {id: $id, description: \"d\"}) { deviceModel { name } } }",
            variables: |f, _| json!({"id": f.model}),
            path: "updateDeviceModel.deviceModel",
        },
        Nested {
            field: "DeviceCredentialPayload.device",
            grants: &["DEVICE_WRITE"],
            operation: "mutation($e: String!, $m: ID!) { registerDevice(input: {endpointId: $e, model: $m}) { secret device { endpointId } } }",
            variables: |f, run| json!({"e": format!("nested-new-{run}"), "m": f.model}),
            path: "registerDevice.device",
        },
        Nested {
            field: "DevicePayload.device",
            grants: &["DEVICE_WRITE"],
            operation: "mutation($id: ID!) { setDeviceGateway(input: {device: $id}) { device { endpointId } } }",
            variables: |f, _| json!({"id": f.device}),
            path: "setDeviceGateway.device",
        },
        Nested {
            field: "DevicesPayload.devices",
            grants: &["DEVICE_WRITE"],
            operation: "mutation($d: ID!) { approveDevices(input: {devices: [$d]}) { devices { endpointId } } }",
            variables: |f, run| json!({"d": f.pending[run]}),
            path: "approveDevices.devices",
        },
        Nested {
            field: "CreateEnrollmentTokenPayload.enrollmentToken",
            grants: &["DEVICE_WRITE"],
            operation: "mutation($n: String!) { createEnrollmentToken(input: {name: $n}) { token enrollmentToken { name } } }",
            variables: |_, run| json!({"n": format!("nested-token-{run}")}),
            path: "createEnrollmentToken.enrollmentToken",
        },
        Nested {
            field: "EnrollmentTokenPayload.enrollmentToken",
            grants: &["DEVICE_WRITE"],
            operation: "mutation($id: ID!) { revokeEnrollmentToken(input: {id: $id}) { enrollmentToken { name } } }",
            variables: |f, run| json!({"id": f.enrollment_tokens[run]}),
            path: "revokeEnrollmentToken.enrollmentToken",
        },
        Nested {
            field: "DeviceGroupPayload.deviceGroup",
            grants: &["GROUP_WRITE"],
            operation: "mutation($id: ID!) { updateDeviceGroup(input: {id: $id, description: \"d\"}) { deviceGroup { name } } }",
            variables: |f, _| json!({"id": f.group}),
            path: "updateDeviceGroup.deviceGroup",
        },
        Nested {
            field: "PackagePayload.package",
            grants: &["PACKAGE_WRITE"],
            operation: "mutation($id: ID!) { deprecatePackage(input: {id: $id, deprecated: false}) { package { name } } }",
            variables: |f, _| json!({"id": f.package}),
            path: "deprecatePackage.package",
        },
        Nested {
            field: "ApplyPackagePayload.deployment",
            grants: &["DEPLOYMENT_WRITE"],
            operation: "mutation($p: ID!, $d: ID!) { applyPackage(input: {package: $p, devices: [$d]}) { skipped { reason } deployment { state } } }",
            variables: |f, _| json!({"p": f.package, "d": f.device}),
            path: "applyPackage.deployment",
        },
        Nested {
            field: "SetGroupPackagePayload.deployment",
            grants: &["DEPLOYMENT_WRITE"],
            operation: "mutation($g: ID!, $p: ID!) { setGroupPackage(input: {group: $g, package: $p}) { skipped { reason } deployment { state } } }",
            variables: |f, _| json!({"g": f.group, "p": f.package}),
            path: "setGroupPackage.deployment",
        },
        Nested {
            field: "DeploymentPayload.deployment",
            grants: &["DEPLOYMENT_WRITE"],
            operation: "mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { state } } }",
            variables: |f, run| json!({"id": f.cancellable[run]}),
            path: "cancelDeployment.deployment",
        },
        Nested {
            field: "DeviceUpdatePayload.deviceUpdate",
            grants: &["DEPLOYMENT_WRITE"],
            operation: "mutation($id: ID!) { cancelDeviceUpdate(input: {id: $id}) { deviceUpdate { state } } }",
            variables: |f, run| json!({"id": f.cancellable_updates[run]}),
            path: "cancelDeviceUpdate.deviceUpdate",
        },
        Nested {
            field: "SendCommandPayload.batch",
            grants: &["COMMAND_SEND"],
            operation: "mutation($d: ID!) { sendCommand(input: {devices: [$d], name: \"REBOOT\"}) { batchId batch { total } } }",
            variables: |f, _| json!({"d": f.device}),
            path: "sendCommand.batch",
        },
        Nested {
            field: "SendCommandPayload.commands",
            grants: &["COMMAND_SEND"],
            operation: "mutation($d: ID!) { sendCommand(input: {devices: [$d], name: \"REBOOT\"}) { batchId commands { totalCount } } }",
            variables: |f, _| json!({"d": f.device}),
            path: "sendCommand.commands",
        },
        Nested {
            field: "CancelCommandPayload.command",
            grants: &["COMMAND_SEND"],
            operation: "mutation($id: ID!) { cancelCommand(input: {id: $id}) { command { state } } }",
            variables: |f, run| json!({"id": f.commands[run]}),
            path: "cancelCommand.command",
        },
        Nested {
            field: "CancelCommandBatchPayload.batch",
            grants: &["COMMAND_SEND"],
            operation: "mutation($id: ID!) { cancelCommandBatch(input: {id: $id}) { batch { total } } }",
            variables: |f, run| json!({"id": f.batches[run]}),
            path: "cancelCommandBatch.batch",
        },
    ]
}

/// `{ name, kind, ofType { ... } }` down to the named type.
const TYPE_REF: &str = "kind name ofType { kind name ofType { kind name ofType { kind name } } }";

fn named_type(ty: &Value) -> (&str, &str) {
    let mut ty = ty;
    while ty["name"].is_null() {
        ty = &ty["ofType"];
    }
    (ty["kind"].as_str().unwrap(), ty["name"].as_str().unwrap())
}

/// The cross-area fields of the schema (`Type.field` → the child's
/// permission, and whether the field is nullable).
async fn cross_area_fields(app: &TestApp) -> std::collections::BTreeMap<String, (&'static str, bool)> {
    let query = format!("{{ __schema {{ types {{ kind name fields {{ name type {{ {TYPE_REF} }} }} }} }} }}");
    let data = app.anonymous().ok(&query, json!({})).await;
    let mut cross = std::collections::BTreeMap::new();
    let mut unclassified = Vec::new();
    for ty in data["__schema"]["types"].as_array().unwrap() {
        let name = ty["name"].as_str().unwrap();
        if ty["kind"] != "OBJECT" || name.starts_with("__") {
            continue;
        }
        let Some(parent) = type_area(name) else {
            unclassified.push(name.to_owned());
            continue;
        };
        if matches!(name, "Query" | "Mutation" | "Subscription") {
            // Root fields have the table above.
            continue;
        }
        for field in ty["fields"].as_array().unwrap() {
            let (kind, child) = named_type(&field["type"]);
            if kind != "OBJECT" {
                continue;
            }
            let Some(Some(child_permission)) = type_area(child) else { continue };
            if parent != Some(child_permission) {
                let nullable = field["type"]["kind"] != "NON_NULL";
                cross.insert(format!("{name}.{}", field["name"].as_str().unwrap()), (child_permission, nullable));
            }
        }
    }
    assert!(unclassified.is_empty(), "object types without an area in type_area(): {unclassified:?}");
    cross
}

/// The string at a JSON pointer of `data`.
fn id(data: &Value, pointer: &str) -> String {
    data.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no {pointer} in {data}")).to_owned()
}

async fn nested_fixture(app: &TestApp) -> Fixture {
    let admin = app.operator("admin");
    let model = id(
        &admin.ok("mutation { createDeviceModel(input: {name: \"M1\"}) { deviceModel { id } } }", json!({})).await,
        "/createDeviceModel/deviceModel/id",
    );
    let mut devices = Vec::new();
    for i in 0..6 {
        let data = admin
            .ok(
                "mutation($e: String!) { registerDevice(input: {endpointId: $e, model: \"M1\", serial: \"SN\", attributes: [{key: \"ring\", value: \"beta\"}]}) { device { id } } }",
                json!({"e": format!("nested-d{i}")}),
            )
            .await;
        devices.push(id(&data, "/registerDevice/device/id"));
    }
    let group = id(
        &admin
            .ok(
                "mutation { createDeviceGroup(input: {name: \"G1\", model: \"M1\"}) { deviceGroup { id } } }",
                json!({}),
            )
            .await,
        "/createDeviceGroup/deviceGroup/id",
    );
    let package = id(
        &admin
            .ok(
                "mutation { createSoftwarePackage(input: {name: \"fw\", version: \"2.0.0\", type: \"URL_LIST\", models: [\"M1\"], links: [\"https://example.com/fw\"]}) { package { id } } }",
                json!({}),
            )
            .await,
        "/createSoftwarePackage/package/id",
    );
    let apply = async |device: &str| {
        let data = admin
            .ok(
                "mutation($p: ID!, $d: ID!) { applyPackage(input: {package: $p, devices: [$d]}) { deployment { id } } }",
                json!({"p": package, "d": device}),
            )
            .await;
        id(&data, "/applyPackage/deployment/id")
    };
    let deployment = apply(&devices[0]).await;
    let cancellable = [apply(&devices[1]).await, apply(&devices[2]).await];
    let mut cancellable_updates = Vec::new();
    for device in &devices[4..6] {
        let deployment = apply(device).await;
        let data = admin
            .ok(
                "query($id: ID!) { deployment(id: $id) { deviceUpdates(first: 1) { edges { node { id } } } } }",
                json!({"id": deployment}),
            )
            .await;
        cancellable_updates.push(id(&data, "/deployment/deviceUpdates/edges/0/node/id"));
    }
    let content = id(
        &admin
            .ok(
                "mutation { createContent(content: {name: \"c\", content_type: \"x\", type: \"firmware\", length: 1}) { id } }",
                json!({}),
            )
            .await,
        "/createContent/id",
    );
    let mut commands = Vec::new();
    let mut batches = Vec::new();
    for _ in 0..4 {
        let data = admin
            .ok(
                "mutation($d: ID!) { sendCommand(input: {devices: [$d], name: \"REBOOT\"}) { batchId commands { edges { node { id } } } } }",
                json!({"d": devices[0]}),
            )
            .await;
        commands.push(id(&data, "/sendCommand/commands/edges/0/node/id"));
        batches.push(id(&data, "/sendCommand/batchId"));
    }
    let mut tokens = Vec::new();
    let mut secrets = Vec::new();
    for i in 0..3 {
        let data = admin
            .ok(
                "mutation($n: String!) { createEnrollmentToken(input: {name: $n, model: \"M1\"}) { token enrollmentToken { id } } }",
                json!({"n": format!("nested-enroll-{i}")}),
            )
            .await;
        tokens.push(id(&data, "/createEnrollmentToken/enrollmentToken/id"));
        secrets.push(id(&data, "/createEnrollmentToken/token"));
    }
    let mut pending = Vec::new();
    for i in 0..2 {
        let response = app
            .client
            .post(app.url("/device/v1/enroll"))
            .bearer_auth(&secrets[2])
            .json(&json!({"endpointId": format!("nested-pending-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        pending.push(format!("nested-pending-{i}"));
    }
    Fixture {
        model,
        device: devices[3].clone(),
        group,
        package,
        deployment,
        cancellable,
        cancellable_updates: [cancellable_updates[0].clone(), cancellable_updates[1].clone()],
        content,
        commands: [commands[0].clone(), commands[1].clone()],
        batches: [batches[2].clone(), batches[3].clone()],
        enrollment_tokens: [tokens[0].clone(), tokens[1].clone()],
        pending: [pending[0].clone(), pending[1].clone()],
    }
}

/// The value at a dot-separated path of `data`.
fn at<'a>(data: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(data, |value, key| match key.parse::<usize>() {
        Ok(index) => &value[index],
        Err(_) => &value[key],
    })
}

fn path_json(path: &str) -> Value {
    path.split('.').map(|key| key.parse::<usize>().map_or_else(|_| json!(key), |i| json!(i))).collect()
}

#[tokio::test]
async fn every_cross_area_field_requires_the_read_permission_of_its_type() {
    let app = TestApp::start().await;
    let entries = nested_table();

    let cross = cross_area_fields(&app).await;
    let in_table: BTreeSet<String> = entries.iter().map(|e| e.field.to_owned()).collect();
    let missing: Vec<_> = cross.keys().filter(|f| !in_table.contains(*f)).collect();
    assert!(missing.is_empty(), "cross-area fields without a row in nested_table(): {missing:?}");
    let stale: Vec<_> = in_table.iter().filter(|f| !cross.contains_key(*f)).collect();
    assert!(stale.is_empty(), "rows for fields that are not cross-area (or gone): {stale:?}");
    let non_null: Vec<_> = cross.iter().filter(|(_, (_, nullable))| !nullable).map(|(f, _)| f).collect();
    assert!(non_null.is_empty(), "cross-area fields must be nullable, so a denial nulls only them: {non_null:?}");

    // A type's area is what its root queries require.
    let query = format!("{{ __schema {{ queryType {{ fields {{ name type {{ {TYPE_REF} }} }} }} }} }}");
    let roots = app.anonymous().ok(&query, json!({})).await;
    let root_table = table();
    for field in roots["__schema"]["queryType"]["fields"].as_array().unwrap() {
        let name = field["name"].as_str().unwrap();
        let (_, ty) = named_type(&field["type"]);
        if let Some(Some(area)) = type_area(ty) {
            let entry = root_table.iter().find(|e| matches!(e.root, Root::Query) && e.field == name).unwrap();
            assert!(
                matches!(entry.needs, Needs::Permission(p) if p == area),
                "Query.{name} returns {ty}, whose area is {area}, but requires {:?}",
                entry.needs
            );
        }
    }

    let fixture = nested_fixture(&app).await;
    let admin = app.operator("admin");
    for entry in &entries {
        let label = entry.field;
        let (child, _) = cross[entry.field];
        assert!(!entry.grants.contains(&child), "{label}: the restricted role must lack {child}");
        let role = format!("nested-{}", entry.grants.join("-").to_lowercase().replace('_', "-"));
        admin
            .gql(
                "mutation($n: String!, $p: [Permission!]!) { createRole(input: {name: $n, permissions: $p}) { role { name } } }",
                json!({"n": role, "p": entry.grants}),
            )
            .await;
        let restricted = app.with_token(&app.token_for("restricted", &[&role]));

        let body = restricted.gql(entry.operation, (entry.variables)(&fixture, 0)).await;
        let errors = body["errors"].as_array().unwrap_or_else(|| panic!("{label}: no error: {body}"));
        assert_eq!(errors.len(), 1, "{label}: {body}");
        assert_eq!(errors[0]["extensions"]["code"], "FORBIDDEN", "{label}: {body}");
        assert_eq!(errors[0]["extensions"]["permission"], child, "{label}: {body}");
        assert_eq!(errors[0]["path"], path_json(entry.path), "{label}: {body}");
        assert!(at(&body["data"], entry.path).is_null(), "{label}: {body}");
        let (parent_path, _) = entry.path.rsplit_once('.').unwrap();
        assert!(at(&body["data"], parent_path).is_object(), "{label}: the parent is there: {body}");

        let data = admin.ok(entry.operation, (entry.variables)(&fixture, 1)).await;
        let value = at(&data, entry.path);
        assert!(value.is_object() || value.is_array(), "{label}: an admin reads it: {data}");
    }
}

/// The `deploymentProgress` push of the next report of `update` (the
/// device reports progress until one arrives).
async fn next_update_push<S>(app: &TestApp, secret: &str, update: &str, socket: &mut S, progress: &mut i64) -> Value
where
    S: futures::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    for _ in 0..50 {
        *progress += 1;
        let response = app
            .client
            .post(app.url(&format!("/device/v1/updates/{update}/status")))
            .bearer_auth(secret)
            .json(&json!({"status": "DOWNLOADING", "progress": *progress}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        while let Ok(message) =
            tokio::time::timeout(std::time::Duration::from_millis(300), crate::audit::next_json(socket)).await
        {
            if !message["payload"]["data"]["deploymentProgress"]["update"].is_null() {
                return message;
            }
        }
    }
    panic!("no push with the update");
}

#[tokio::test]
async fn deployment_progress_pushes_no_device_to_a_subscriber_without_device_read() {
    let app = TestApp::start().await;
    let admin = app.operator("admin");
    admin.ok("mutation { createDeviceModel(input: {name: \"M1\"}) { deviceModel { id } } }", json!({})).await;
    let secret = id(
        &admin
            .ok("mutation { registerDevice(input: {endpointId: \"live-d1\", model: \"M1\"}) { secret } }", json!({}))
            .await,
        "/registerDevice/secret",
    );
    admin
        .ok(
            "mutation { createSoftwarePackage(input: {name: \"fw\", version: \"2.0.0\", type: \"URL_LIST\", models: [\"M1\"], links: [\"https://example.com/fw\"]}) { package { id } } }",
            json!({}),
        )
        .await;
    let package = id(&admin.ok("{ packages { edges { node { id } } } }", json!({})).await, "/packages/edges/0/node/id");
    let deployment = id(
        &admin
            .ok(
                "mutation($p: ID!) { applyPackage(input: {package: $p, devices: [\"live-d1\"]}) { deployment { id } } }",
                json!({"p": package}),
            )
            .await,
        "/applyPackage/deployment/id",
    );
    admin.ok(
        "mutation { createRole(input: {name: \"rollout-watcher\", permissions: [DEPLOYMENT_READ]}) { role { name } } }",
        json!({}),
    )
    .await;
    let query = format!(
        "subscription {{ deploymentProgress(id: \"{deployment}\") {{ deployment {{ state }} update {{ state progress device {{ endpointId }} }} }} }}"
    );
    let restricted = app.token_for("watcher", &["rollout-watcher"]);
    let mut socket = crate::audit::subscribe_at(app.server().addr, Some(&restricted), &query).await;
    let mut admin_socket =
        crate::audit::subscribe_at(app.server().addr, Some(&app.token_for("boss", &["admin"])), &query).await;
    for socket in [&mut socket, &mut admin_socket] {
        let first = crate::audit::next_json(socket).await;
        assert_eq!(first["payload"]["data"]["deploymentProgress"]["deployment"]["state"], "RUNNING", "{first}");
    }

    let poll = app.client.get(app.url("/device/v1/poll")).bearer_auth(&secret).send().await.unwrap();
    let update = id(&poll.json::<Value>().await.unwrap(), "/update/id");
    let mut progress = 0;
    let message = next_update_push(&app, &secret, &update, &mut socket, &mut progress).await;
    let payload = &message["payload"];
    assert_eq!(payload["data"]["deploymentProgress"]["update"]["state"], "DOWNLOADING", "{message}");
    assert!(payload["data"]["deploymentProgress"]["update"]["device"].is_null(), "{message}");
    assert_eq!(payload["errors"].as_array().map(Vec::len), Some(1), "{message}");
    assert_eq!(payload["errors"][0]["extensions"]["code"], "FORBIDDEN", "{message}");
    assert_eq!(payload["errors"][0]["path"], json!(["deploymentProgress", "update", "device"]), "{message}");

    // The admin's push of the same kind names the device.
    let message = next_update_push(&app, &secret, &update, &mut admin_socket, &mut progress).await;
    assert_eq!(message["payload"]["data"]["deploymentProgress"]["update"]["device"]["endpointId"], "live-d1");
    assert!(message["payload"]["errors"].is_null(), "{message}");
}
