//! The hawkBit DDI device API (Direct Device Integration, what SWUpdate's
//! suricatta and rauc-hawkbit-updater speak) under
//! `/{tenant}/controller/v1/{controllerId}`: the base poll, deploymentBase
//! and its feedback, cancelAction and its feedback, configData,
//! installedBase, and artifact downloads. docs/ddi.md maps it to
//! otadepot's updates.
//!
//! A thin adapter over `service::device_api::ddi`: wire structs in, one
//! call, wire structs out. The quirks of stock clients are met here, on
//! the wire:
//! - the tenant is `ddi.tenant` (ignoring case); any other is 404;
//! - `Authorization: TargetToken <device secret>` or `GatewayToken
//!   <gateway secret>` (prefixes case-sensitive, as hawkBit spells them);
//!   anything else, or a token of another controller, is 401;
//! - every href is absolute (libcurl uses it as given) and the
//!   cancelAction href has no query (clients append `/feedback`);
//! - action ids are JSON strings of an int32;
//! - feedback is read leniently: raw control characters inside strings
//!   (swupdate pastes error text unescaped), `id` a number or a string,
//!   `cnt` above `of`; feedback and configData answer 200 with no body
//!   (swupdate takes 201 and 204 as errors and loops).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::repository::{Signature, cache_control, serve};
use super::{HttpState, request_id};
use crate::auth::{Actor, Ctx};
use crate::error::{Error, ResourceKind, Result};
use crate::service::content::DownloadAccess;
use crate::service::device_api::{self, ddi};

/// `.MD5SUM` after an artifact's name asks for its MD5 file.
const MD5SUM_SUFFIX: &str = ".MD5SUM";

// ---------------------------------------------------------------------------
// The caller.

/// The device a DDI request is for: its own `TargetToken`, or a gateway's
/// `GatewayToken` acting for it (or for the gateway itself).
async fn caller(state: &HttpState, headers: &HeaderMap, tenant: &str, controller_id: &str) -> Result<Ctx> {
    check_tenant(state, tenant)?;
    let refused = || {
        Error::Unauthenticated(
            "Authorization must be \"TargetToken <device secret>\" or \"GatewayToken <gateway secret>\"".into(),
        )
    };
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(refused)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(refused)?;
    let token = token.trim();
    let gateway = match scheme {
        "TargetToken" => false,
        "GatewayToken" => true,
        _ => return Err(refused()),
    };
    let ctx = device_api::authenticate(&state.app, token, request_id(headers)).await?;
    let own = matches!(&ctx.actor, Actor::Device(d) if d.endpoint_id == controller_id);
    if own {
        return Ok(ctx);
    }
    if !gateway {
        return Err(Error::Unauthenticated(format!("the target token is not controller {controller_id:?}'s")));
    }
    match device_api::act_for(&state.app, &ctx, controller_id).await {
        Err(Error::NotFound { .. }) => {
            Err(Error::Unauthenticated(format!("controller {controller_id:?} is not a sub-device of this gateway")))
        }
        other => other,
    }
}

fn check_tenant(state: &HttpState, tenant: &str) -> Result<()> {
    if tenant.eq_ignore_ascii_case(&state.app.config.ddi.tenant) {
        Ok(())
    } else {
        Err(Error::not_found(ResourceKind::Tenant, tenant))
    }
}

/// An action id of a path: a positive int32, else NOT_FOUND.
fn action_id(text: &str) -> Result<i32> {
    text.parse::<i32>().ok().filter(|id| *id > 0).ok_or_else(|| Error::not_found(ResourceKind::Update, text))
}

// ---------------------------------------------------------------------------
// Answers.

/// `{"href": …}`.
#[derive(Serialize)]
struct Link {
    href: String,
}

/// What a path segment escapes (as the URL standard's path-segment set,
/// and `/` and `%`).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'?')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%');

/// An absolute URL under this server's public URL (checked at start, no
/// trailing slash), of path segments (each percent-encoded) and an
/// optional query; built as text, since a base poll makes one or two.
fn href(state: &HttpState, segments: &[&str], query: Option<&str>) -> Result<Link> {
    let base = state.app.public_url();
    let mut href = String::with_capacity(base.len() + 96 + query.map_or(0, str::len));
    href.push_str(base.trim_end_matches('/'));
    for segment in segments {
        href.push('/');
        href.extend(percent_encoding::utf8_percent_encode(segment, SEGMENT));
    }
    if let Some(query) = query {
        href.push('?');
        href.push_str(query);
    }
    Ok(Link { href })
}

/// HAL+JSON, as hawkBit answers (clients do not check the type).
fn hal(body: &impl Serialize) -> Result<Response> {
    let bytes = serde_json::to_vec(body).map_err(Error::internal)?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/hal+json"))], bytes).into_response())
}

/// "HH:MM:SS".
fn hms(duration: std::time::Duration) -> String {
    let s = duration.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[derive(Serialize)]
struct BaseAnswer {
    config: BaseConfig,
    #[serde(rename = "_links", skip_serializing_if = "BaseLinks::is_empty")]
    links: BaseLinks,
}

#[derive(Serialize)]
struct BaseConfig {
    polling: Polling,
}

#[derive(Serialize)]
struct Polling {
    sleep: String,
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct BaseLinks {
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment_base: Option<Link>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_action: Option<Link>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_data: Option<Link>,
    #[serde(skip_serializing_if = "Option::is_none")]
    installed_base: Option<Link>,
}

impl BaseLinks {
    fn is_empty(&self) -> bool {
        self.deployment_base.is_none()
            && self.cancel_action.is_none()
            && self.config_data.is_none()
            && self.installed_base.is_none()
    }
}

/// `GET /{tenant}/controller/v1/{controllerId}`: the polling sleep and
/// what there is to do.
pub async fn base(
    State(state): State<HttpState>,
    Path((tenant, cid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let ctx = caller(&state, &headers, &tenant, &cid).await?;
    let base = ddi::base(&state.app, &ctx).await?;
    let root = [tenant.as_str(), "controller", "v1", cid.as_str()];
    let at = |tail: &[&str], query: Option<&str>| {
        let segments: Vec<&str> = root.iter().chain(tail).copied().collect();
        href(&state, &segments, query)
    };
    let mut links = BaseLinks::default();
    match &base.action {
        Some(ddi::BaseAction::Deployment { action_id, etag }) => {
            let id = action_id.to_string();
            links.deployment_base = Some(at(&["deploymentBase", &id], Some(&format!("c={etag}")))?);
        }
        Some(ddi::BaseAction::Cancel { action_id }) => {
            links.cancel_action = Some(at(&["cancelAction", &action_id.to_string()], None)?);
        }
        None => {}
    }
    if base.config_data {
        links.config_data = Some(at(&["configData"], None)?);
    }
    if let Some(installed) = base.installed {
        links.installed_base = Some(at(&["installedBase", &installed.to_string()], None)?);
    }
    let ddi_config = &state.app.config.ddi;
    let sleep = if base.active { ddi_config.polling_sleep_active } else { ddi_config.polling_sleep };
    let answer = BaseAnswer { config: BaseConfig { polling: Polling { sleep: hms(sleep) } }, links };
    let mut response = hal(&answer)?;
    if base.action.is_none() {
        response.extensions_mut().insert(super::Routine);
    }
    Ok(response)
}

#[derive(Serialize)]
struct DeploymentAnswer<'a> {
    id: String,
    deployment: DeploymentView<'a>,
}

#[derive(Serialize)]
struct DeploymentView<'a> {
    download: &'static str,
    update: &'static str,
    #[serde(rename = "maintenanceWindow", skip_serializing_if = "Option::is_none")]
    maintenance_window: Option<&'static str>,
    chunks: [Chunk<'a>; 1],
}

#[derive(Serialize)]
struct Chunk<'a> {
    part: &'a str,
    version: &'a str,
    name: &'a str,
    artifacts: Vec<ArtifactView<'a>>,
}

#[derive(Serialize)]
struct ArtifactView<'a> {
    filename: &'a str,
    size: i64,
    hashes: Hashes<'a>,
    #[serde(rename = "_links", skip_serializing_if = "Option::is_none")]
    links: Option<ArtifactLinks>,
}

#[derive(Serialize)]
struct Hashes<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sha1: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    md5: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<&'a str>,
}

#[derive(Serialize)]
struct ArtifactLinks {
    download: Link,
    #[serde(rename = "download-http")]
    download_http: Link,
    md5sum: Link,
    #[serde(rename = "md5sum-http")]
    md5sum_http: Link,
}

fn deployment_answer<'a>(
    state: &HttpState,
    tenant: &str,
    cid: &str,
    deployment: &'a ddi::Deployment,
) -> Result<DeploymentAnswer<'a>> {
    let module = deployment.package_id.to_string();
    let artifacts = deployment
        .artifacts
        .iter()
        .map(|a| {
            let links = match &a.signed_query {
                None => None,
                Some(query) => {
                    let file = |name: &str| {
                        href(
                            state,
                            &[tenant, "controller", "v1", cid, "softwaremodules", &module, "artifacts", name],
                            Some(query),
                        )
                    };
                    let md5sum = format!("{}{MD5SUM_SUFFIX}", a.filename);
                    Some(ArtifactLinks {
                        download: file(&a.filename)?,
                        download_http: file(&a.filename)?,
                        md5sum: file(&md5sum)?,
                        md5sum_http: file(&md5sum)?,
                    })
                }
            };
            Ok(ArtifactView {
                filename: &a.filename,
                size: a.size,
                hashes: Hashes { sha1: a.sha1.as_deref(), md5: a.md5.as_deref(), sha256: a.sha256.as_deref() },
                links,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(DeploymentAnswer {
        id: deployment.action_id.to_string(),
        deployment: DeploymentView {
            download: deployment.download,
            update: deployment.update,
            maintenance_window: deployment.maintenance_window,
            chunks: [Chunk {
                part: &deployment.component,
                version: &deployment.version,
                name: &deployment.name,
                artifacts,
            }],
        },
    })
}

/// `GET …/deploymentBase/{actionId}` (any `?c=`): the update to install.
pub async fn deployment_base(
    State(state): State<HttpState>,
    Path((tenant, cid, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let ctx = caller(&state, &headers, &tenant, &cid).await?;
    let deployment = ddi::deployment_base(&state.app, &ctx, action_id(&action)?).await?;
    hal(&deployment_answer(&state, &tenant, &cid, &deployment)?)
}

/// `GET …/installedBase/{actionId}`: the update installed last.
pub async fn installed_base(
    State(state): State<HttpState>,
    Path((tenant, cid, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let ctx = caller(&state, &headers, &tenant, &cid).await?;
    let deployment = ddi::installed_base(&state.app, &ctx, action_id(&action)?).await?;
    hal(&deployment_answer(&state, &tenant, &cid, &deployment)?)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CancelAnswer {
    id: String,
    cancel_action: StopId,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StopId {
    stop_id: String,
}

/// `GET …/cancelAction/{actionId}`: the cancel of that action.
pub async fn cancel_action(
    State(state): State<HttpState>,
    Path((tenant, cid, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let ctx = caller(&state, &headers, &tenant, &cid).await?;
    let stop = ddi::cancel_action(&state.app, &ctx, action_id(&action)?).await?;
    hal(&CancelAnswer { id: stop.to_string(), cancel_action: StopId { stop_id: stop.to_string() } })
}

// ---------------------------------------------------------------------------
// Feedback and configData.

/// `body` as JSON, with raw control characters inside strings taken as
/// their escapes (swupdate pastes error text into `details` unescaped);
/// not JSON, or not an object, is BAD_USER_INPUT on `body`.
fn lenient_json(body: &[u8]) -> Result<serde_json::Map<String, Value>> {
    let mut fixed = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped) = (false, false);
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            } else if byte < 0x20 {
                fixed.extend_from_slice(format!("\\u{byte:04x}").as_bytes());
                continue;
            }
        } else if byte == b'"' {
            in_string = true;
        }
        fixed.push(byte);
    }
    match serde_json::from_slice(&fixed) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::invalid("body", "must be a JSON object")),
        Err(e) => Err(Error::invalid("body", format!("not JSON: {e}"))),
    }
}

/// A feedback body: `{"id", "time", "status": {"execution", "result":
/// {"finished", "progress": {"cnt", "of"}}, "details": […]}}`; `id` and
/// `time` are not needed (the path names the action).
fn parse_feedback(body: &[u8]) -> Result<ddi::Feedback> {
    let body = lenient_json(body)?;
    let status = body.get("status").and_then(Value::as_object).ok_or_else(|| {
        Error::invalid("status", "is required: {\"execution\", \"result\": {\"finished\"}, \"details\"}")
    })?;
    let execution = status
        .get("execution")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid("status.execution", "is required"))?;
    let result = status.get("result").and_then(Value::as_object);
    let finished = match result.and_then(|r| r.get("finished")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(Error::invalid("status.result.finished", "must be a string")),
    };
    let number = |v: &Value| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64));
    let progress = result.and_then(|r| r.get("progress")).and_then(Value::as_object).and_then(|p| {
        let cnt = p.get("cnt").and_then(number)?;
        Some((cnt, p.get("of").and_then(number).unwrap_or(0)))
    });
    let details = match status.get("details") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(_) => return Err(Error::invalid("status.details", "must be a list of strings")),
    };
    Ok(ddi::Feedback {
        execution: ddi::Execution::parse(execution)?,
        finished: ddi::Finished::parse(finished)?,
        progress,
        details,
    })
}

/// 200 with no body: the only success swupdate takes (201 and 204 are
/// errors to it).
fn ok() -> Response {
    StatusCode::OK.into_response()
}

/// `POST …/deploymentBase/{actionId}/feedback`.
pub async fn deployment_feedback(
    State(state): State<HttpState>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    feedback(&state, path, &headers, &body, false).await
}

/// `POST …/cancelAction/{actionId}/feedback`.
pub async fn cancel_feedback(
    State(state): State<HttpState>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    feedback(&state, path, &headers, &body, true).await
}

/// A feedback on the action (`cancel`: on its cancel).
async fn feedback(
    state: &HttpState,
    (tenant, cid, action): (String, String, String),
    headers: &HeaderMap,
    body: &[u8],
    cancel: bool,
) -> Result<Response> {
    let ctx = caller(state, headers, &tenant, &cid).await?;
    let action = action_id(&action)?;
    let feedback = parse_feedback(body)?;
    if cancel {
        ddi::cancel_feedback(&state.app, &ctx, action, feedback).await?;
    } else {
        ddi::feedback(&state.app, &ctx, action, feedback).await?;
    }
    Ok(ok())
}

/// `PUT …/configData` `{"mode": "merge" | "replace" | "remove", "data":
/// {name: value}}` (`id`, `time` and `status` as stock clients send them
/// are not needed): the device's reported attributes.
pub async fn config_data(
    State(state): State<HttpState>,
    Path((tenant, cid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let ctx = caller(&state, &headers, &tenant, &cid).await?;
    let body = lenient_json(&body)?;
    let mode = match body.get("mode") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(Error::invalid("mode", "must be a string")),
    };
    let mode = ddi::ConfigMode::parse(mode)?;
    let data = match body.get("data") {
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| match v {
                Value::Null => None,
                Value::String(s) => Some(Ok((k.clone(), s.clone()))),
                Value::Number(_) | Value::Bool(_) => Some(Ok((k.clone(), v.to_string()))),
                _ => Some(Err(Error::invalid("data", format!("{k}: a string, number or boolean")))),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(Error::invalid("data", "is required: an object of name to value")),
    };
    ddi::config_data(&state.app, &ctx, mode, data).await?;
    Ok(ok())
}

// ---------------------------------------------------------------------------
// Artifacts.

/// `GET`/`HEAD …/softwaremodules/{module}/artifacts/{filename}` (Range
/// gives 206), and `{filename}.MD5SUM`: with the device's token, or with
/// the signed query its deploymentBase links carry.
pub async fn artifact(
    State(state): State<HttpState>,
    Path((tenant, cid, module, filename)): Path<(String, String, String, String)>,
    Query(signature): Query<Signature>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response> {
    check_tenant(&state, &tenant)?;
    let module: Uuid = module.parse().map_err(|_| Error::not_found(ResourceKind::UpdateFile, &module))?;
    let md5sum = filename.strip_suffix(MD5SUM_SUFFIX);
    let name = md5sum.unwrap_or(&filename);
    let open = async |access: &DownloadAccess| match ddi::open_artifact(&state.app, access, module, name).await {
        // A file really named `….MD5SUM`.
        Err(Error::NotFound { .. }) if md5sum.is_some() => {
            ddi::open_artifact(&state.app, access, module, &filename).await
        }
        other => other,
    };
    let mut access = match signature.into_signed() {
        Some(signed) => signed,
        None => DownloadAccess::Caller(caller(&state, &headers, &tenant, &cid).await?),
    };
    let (artifact, download) = match open(&access).await {
        // A link that no longer verifies (expired, signed under an older
        // credential) still downloads with the token sent beside it.
        Err(Error::BadSignature(_)) if headers.contains_key(header::AUTHORIZATION) => {
            access = DownloadAccess::Caller(caller(&state, &headers, &tenant, &cid).await?);
            open(&access).await?
        }
        other => other?,
    };
    let cache = cache_control(&access)?;
    if md5sum.is_some() && artifact.filename != filename {
        let md5 = download.md5.clone().or(artifact.md5.clone()).unwrap_or_default();
        let body = format!("{md5}  {}\n", artifact.filename);
        // A HEAD gets the headers of this answer; axum drops the body.
        return Ok((
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain")), (header::CACHE_CONTROL, cache)],
            body,
        )
            .into_response());
    }
    serve(&state, &method, &headers, &download, cache).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_control_characters_inside_strings_are_read_as_their_escapes() {
        let body = b"{\"status\": {\"execution\": \"closed\",\n\t\"details\": [\"a\nb\", \"tab\there\", \"quote \\\" and\r\"]}}";
        let map = lenient_json(body).expect("read");
        assert_eq!(map["status"]["details"], serde_json::json!(["a\nb", "tab\there", "quote \" and\r"]));
        assert!(lenient_json(b"{\"open\": \"no end}").is_err());
        assert!(lenient_json(b"[1]").is_err());
    }

    #[test]
    fn feedback_takes_ids_of_either_kind_and_progress_past_its_end() {
        let feedback = parse_feedback(
            br#"{"id": "7", "time": "20261122T121441", "status": {"result": {"progress": {"cnt": 3, "of": 0}, "finished": "none"}, "execution": "proceeding", "details": "one line"}}"#,
        )
        .expect("read");
        assert_eq!(feedback.execution, ddi::Execution::Proceeding);
        assert_eq!(feedback.progress, Some((3, 0)));
        assert_eq!(feedback.details, ["one line"]);
    }

    #[test]
    fn path_segments_are_escaped_as_url_does() {
        for segment in ["dev-01", "a b", "a/b", "100%", "ü?#", "x{y}`z\"<>"] {
            let mut expected = url::Url::parse("http://h/").expect("url");
            expected.path_segments_mut().expect("path").pop_if_empty().push(segment);
            let ours: String = percent_encoding::utf8_percent_encode(segment, SEGMENT).collect();
            assert_eq!(format!("http://h/{ours}"), expected.as_str(), "{segment:?}");
        }
    }

    #[test]
    fn polling_sleep_is_written_as_hours_minutes_seconds() {
        assert_eq!(hms(std::time::Duration::from_secs(300)), "00:05:00");
        assert_eq!(hms(std::time::Duration::from_secs(86_399)), "23:59:59");
    }
}
