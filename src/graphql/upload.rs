//! The `Upload` scalar of the GraphQL multipart request spec
//! (github.com/jaydenseric/graphql-multipart-request-spec), and the one
//! file a multipart request carries.
//!
//! Rule: the file is never buffered, in memory or on disk. `http/graphql.rs`
//! reads `operations` and `map`, then hands the request its file part as a
//! stream ([`PendingFile`]); the resolver that takes it passes the stream
//! to the service, which reads it straight into staging. An `Upload` value
//! is only the name of that part: in a JSON request it names nothing.

use std::sync::{Mutex, PoisonError};

use async_graphql::{Context, InputValueError, InputValueResult, Scalar, ScalarType, Value};
use bytes::Bytes;
use futures::stream::BoxStream;

/// The bytes of the request's file part, as they arrive.
pub type FileBody = BoxStream<'static, std::io::Result<Bytes>>;

/// A file of a multipart request: the name of its part (the `map` key).
pub struct Upload(String);

#[Scalar(name = "Upload", specified_by_url = "https://github.com/jaydenseric/graphql-multipart-request-spec")]
impl ScalarType for Upload {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(part) => Ok(Upload(part)),
            other => Err(InputValueError::custom(format!(
                "an Upload is a file part of a GraphQL multipart request, not {other}"
            ))),
        }
    }

    fn to_value(&self) -> Value {
        Value::Null
    }
}

impl Upload {
    /// The file's bytes, for the one resolver that takes them; None when
    /// the request has no such part (a JSON request) or it was taken.
    pub(crate) fn take(&self, ctx: &Context<'_>) -> Option<FileBody> {
        let pending = ctx.data_opt::<PendingFile>()?;
        if pending.part != self.0 {
            return None;
        }
        pending.body.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Request data: the file part of a multipart request, not yet read.
pub struct PendingFile {
    part: String,
    body: Mutex<Option<FileBody>>,
}

impl PendingFile {
    pub fn new(part: String, body: FileBody) -> Self {
        Self { part, body: Mutex::new(Some(body)) }
    }

    /// The `Upload` value that names this file, put into the variables in
    /// place of the spec's `null`.
    pub fn value(&self) -> async_graphql::Value {
        async_graphql::Value::String(self.part.clone())
    }
}
