//! The one domain error type.
//!
//! Services return [`Error`]; it is converted once to a GraphQL error (with
//! `extensions.code`) in [`Error::into_graphql`], once to an HTTP
//! response in its `IntoResponse` impl, and once to the EnOS edge
//! protocol's shape in [`Error::into_enos_response`]. Internal errors are logged where
//! they are converted (inside the request's span, so with its request id)
//! and reach the client as a bare "internal error".
//!
//! Rule: never build a GraphQL or HTTP error by hand elsewhere; add a
//! variant here if none fits.

use async_graphql::ErrorExtensions;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sea_orm::{DbErr, SqlErr};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("missing permission {permission}")]
    Forbidden { permission: &'static str },
    /// A signed URL that does not verify or has expired.
    #[error("signed URL {0}")]
    BadSignature(&'static str),
    /// Says where ids of that kind come from, for ids copied by hand.
    #[error("{} {id} not found{}", kind.name(), kind.id_source())]
    NotFound { kind: ResourceKind, id: String },
    #[error("{field}: {reason}")]
    InvalidInput { field: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    /// A batch refused as a whole (nothing written), naming every bad row.
    /// CONFLICT when every row is a duplicate, BAD_USER_INPUT otherwise.
    #[error("{} row(s) refused, nothing was written; first: {}", rows.len(), rows.first().map(RowError::to_string).unwrap_or_default())]
    Rows { rows: Vec<RowError> },
    #[error("{0}")]
    InvalidState(String),
    #[error("payload larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// A rate limit (`service::rate_limit`): try again after this long.
    #[error("too many requests; retry after {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The kinds of things an id names: one name for messages ("device group
/// … not found") and one for the audit trail's `object_kind`
/// (`device_group`), from one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    Command,
    CommandBatch,
    Content,
    Deployment,
    Device,
    DeviceGroup,
    DeviceModel,
    EnrollmentToken,
    Package,
    Role,
    /// A device update (one device's part of a deployment).
    Update,
    /// The file of a device update.
    UpdateFile,
    /// The update a device has in progress (EnOS, by its device).
    UpdateInProgress,
    /// A repository object (by SHA-256).
    Object,
    TusUpload,
    /// A hawkBit DDI tenant (`ddi.tenant`).
    Tenant,
}

impl ResourceKind {
    /// As messages name it: "device group".
    pub fn name(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::CommandBatch => "command batch",
            Self::Content => "content",
            Self::Deployment => "deployment",
            Self::Device => "device",
            Self::DeviceGroup => "device group",
            Self::DeviceModel => "device model",
            Self::EnrollmentToken => "enrollment token",
            Self::Package => "package",
            Self::Role => "role",
            Self::Update => "update",
            Self::UpdateFile => "file of update",
            Self::UpdateInProgress => "update in progress",
            Self::Object => "object",
            Self::TusUpload => "tus upload",
            Self::Tenant => "tenant",
        }
    }

    /// As the audit trail records it (`object_kind`): "device_group".
    pub fn audit_kind(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::CommandBatch => "command_batch",
            Self::Content => "content",
            Self::Deployment => "deployment",
            Self::Device => "device",
            Self::DeviceGroup => "device_group",
            Self::DeviceModel => "device_model",
            Self::EnrollmentToken => "enrollment_token",
            Self::Package => "package",
            Self::Role => "role",
            Self::Update | Self::UpdateFile | Self::UpdateInProgress => "device_update",
            Self::Object => "object",
            Self::TusUpload => "tus_upload",
            Self::Tenant => "tenant",
        }
    }

    /// Where ids of this kind come from, as " (ids come from …)", or
    /// nothing for a kind nobody copies by hand. Part of NOT_FOUND and
    /// bad-id messages, so that an id pasted into the wrong place says where
    /// the right one is.
    pub fn id_source(self) -> &'static str {
        match self {
            Self::Content => " (ids come from createContent, uploadContent or contents)",
            Self::Package => " (ids come from createSoftwarePackage or packages)",
            Self::DeviceModel => " (ids come from createDeviceModel or deviceModels)",
            Self::Device => " (ids come from registerDevices, `otadepot devices import` or devices)",
            Self::DeviceGroup => " (ids come from createDeviceGroup or deviceGroups)",
            Self::Deployment => " (ids come from applyPackage or deployments)",
            Self::Update => " (ids come from the `update` of the device's poll, GET /device/v1/poll)",
            Self::Command => {
                " (ids come from the `commands` of the device's poll, GET /device/v1/poll, or from commands)"
            }
            Self::CommandBatch => " (ids come from sendCommand's batchId)",
            Self::EnrollmentToken => " (ids come from createEnrollmentToken or enrollmentTokens)",
            Self::Role | Self::UpdateFile | Self::UpdateInProgress | Self::Object | Self::TusUpload => "",
            Self::Tenant => " (the one tenant is ddi.tenant in the configuration)",
        }
    }
}

/// What is wrong with one row of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    /// 0-based position in the batch.
    pub row: usize,
    /// The row's own key (an endpoint id), to find it by.
    pub key: String,
    pub field: String,
    pub message: String,
    pub duplicate: bool,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {} ({}): {}: {}", self.row, self.key, self.field, self.message)
    }
}

impl Error {
    pub fn not_found(kind: ResourceKind, id: impl Into<String>) -> Self {
        Self::NotFound { kind, id: id.into() }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidInput { field: field.into(), reason: reason.into() }
    }

    /// An id that does not even parse: "not a {kind} id", saying where
    /// ids of that kind come from.
    pub fn bad_id(field: impl Into<String>, kind: ResourceKind) -> Self {
        Self::invalid(field, format!("not a {} id{}", kind.name(), kind.id_source()))
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// The `extensions.code` of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden { .. } | Self::BadSignature(_) => "FORBIDDEN",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::InvalidInput { .. } => "BAD_USER_INPUT",
            Self::Conflict(_) => "CONFLICT",
            Self::Rows { rows } if rows.iter().all(|r| r.duplicate) => "CONFLICT",
            Self::Rows { .. } => "BAD_USER_INPUT",
            Self::InvalidState(_) => "INVALID_STATE",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::TooManyRequests { .. } => "TOO_MANY_REQUESTS",
            Self::Internal(_) => "INTERNAL",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } | Self::BadSignature(_) => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Rows { rows } if rows.iter().all(|r| r.duplicate) => StatusCode::CONFLICT,
            Self::Rows { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidState(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `Retry-After` header an HTTP answer of this error carries.
    pub fn retry_after(&self) -> Option<http::HeaderValue> {
        match self {
            Self::TooManyRequests { retry_after_secs } => Some(http::HeaderValue::from(*retry_after_secs)),
            _ => None,
        }
    }

    /// Client-facing message; internal detail stays in the logs.
    fn public_message(&self) -> String {
        if let Self::Internal(err) = self {
            tracing::error!(error = format!("{err:#}"), "internal error");
        }
        self.to_string()
    }

    pub fn into_graphql(self) -> async_graphql::Error {
        let code = self.code();
        let message = self.public_message();
        let mut err = async_graphql::Error::new(message);
        err = err.extend_with(|_, ext| {
            ext.set("code", code);
            match &self {
                Self::InvalidInput { field, .. } => ext.set("field", field.as_str()),
                Self::Forbidden { permission } => ext.set("permission", *permission),
                Self::TooManyRequests { retry_after_secs } => ext.set("retryAfterSeconds", *retry_after_secs),
                Self::Rows { rows } => {
                    let rows: Vec<async_graphql::Value> = rows
                        .iter()
                        .map(|r| {
                            let mut map = async_graphql::indexmap::IndexMap::new();
                            map.insert(async_graphql::Name::new("row"), async_graphql::Value::from(r.row as u64));
                            map.insert(async_graphql::Name::new("key"), async_graphql::Value::from(r.key.as_str()));
                            map.insert(async_graphql::Name::new("field"), async_graphql::Value::from(r.field.as_str()));
                            map.insert(
                                async_graphql::Name::new("message"),
                                async_graphql::Value::from(r.message.as_str()),
                            );
                            async_graphql::Value::Object(map)
                        })
                        .collect();
                    ext.set("rows", async_graphql::Value::List(rows));
                }
                _ => {}
            }
        });
        err
    }
}

impl Error {
    /// The EnOS edge protocol's error, `{"httpstatus": 404, "message": "…"}`
    /// with the HTTP status it names (and `Retry-After` when there is one).
    pub fn into_enos_response(self) -> Response {
        let status = self.status();
        let message = self.public_message();
        let retry_after = self.retry_after();
        let body = serde_json::json!({ "httpstatus": status.as_u16(), "message": message });
        let mut response = (status, Json(body)).into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert(http::header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<Error> for async_graphql::Error {
    fn from(err: Error) -> Self {
        err.into_graphql()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let message = self.public_message();
        let mut error = serde_json::json!({ "code": code, "message": message });
        if let Self::InvalidInput { field, .. } = &self {
            error["field"] = serde_json::Value::String(field.clone());
        }
        let retry_after = self.retry_after();
        let mut response = (status, Json(serde_json::json!({ "error": error }))).into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert(http::header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Database errors map here and nowhere else: a unique violation is a
/// CONFLICT, a lost connection is UNAVAILABLE, the rest is INTERNAL.
impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                return Self::Conflict("an object with the same unique key already exists".into());
            }
            Some(SqlErr::ForeignKeyConstraintViolation(_)) => {
                return Self::Conflict("the object is referenced by, or references, another object".into());
            }
            _ => {}
        }
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Self::Unavailable("database unavailable".into()),
            _ => Self::Internal(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_names_itself_once_for_messages_and_once_for_the_audit_trail() {
        assert_eq!(
            Error::not_found(ResourceKind::DeviceGroup, "g1").to_string(),
            "device group g1 not found (ids come from createDeviceGroup or deviceGroups)"
        );
        assert_eq!(Error::not_found(ResourceKind::Object, "ab").to_string(), "object ab not found");
        assert_eq!(
            Error::bad_id("group", ResourceKind::DeviceGroup).to_string(),
            "group: not a device group id (ids come from createDeviceGroup or deviceGroups)"
        );
        assert_eq!((ResourceKind::Update.name(), ResourceKind::Update.audit_kind()), ("update", "device_update"));
        assert_eq!(ResourceKind::CommandBatch.audit_kind(), "command_batch");
    }
}
