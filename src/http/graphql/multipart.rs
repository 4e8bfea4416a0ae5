//! The GraphQL multipart request (github.com/jaydenseric/graphql-multipart-request-spec),
//! read so that no part is ever buffered beyond its limit.
//!
//! `operations` and `map` are each at most `http.max_body_bytes`, read
//! chunk by chunk and refused (413) the moment they go over; the request
//! carries at most one file, which is not read here at all: it becomes a
//! [`PendingFile`] stream that the resolver taking it reads straight into
//! staging. Until the file part starts, the body as a whole may bring at
//! most twice `http.max_body_bytes` plus a little, so a preamble or part
//! headers without end are refused as well.
//!
//! Rule: nothing here reads the file part, and nothing is read before the
//! caller was authenticated (`post` does that first).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_graphql::BatchRequest;
use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::{StreamExt, TryStreamExt};

use crate::config::HttpConfig;
use crate::error::Error;
use crate::graphql::upload::PendingFile;

/// Room for the boundaries and part headers around `operations` and `map`,
/// and for what the parser reads ahead of the file part.
const SLACK: u64 = 1024 * 1024;

/// Parse a multipart request into its operations, with the file (if any)
/// attached to the operation that names it.
pub async fn receive(
    config: &HttpConfig,
    content_type: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<BatchRequest, Error> {
    let part_limit = config.max_body_bytes;
    let prefix_limit = 2 * part_limit as u64 + SLACK;
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| Error::invalid("content-type", format!("not a multipart content type: {e}")))?;
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > config.max_upload_bytes.saturating_add(prefix_limit))
    {
        return Err(Error::PayloadTooLarge { limit: config.max_upload_bytes });
    }

    // The body may bring `allowance` bytes until the file part starts.
    let allowance = Arc::new(AtomicU64::new(prefix_limit));
    let tripped = Arc::new(AtomicBool::new(false));
    let read = AtomicU64::new(0);
    let stream = {
        let (allowance, tripped) = (allowance.clone(), tripped.clone());
        body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            let total = read.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            if total > allowance.load(Ordering::Relaxed) {
                tripped.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("multipart request over its limit before the file"));
            }
            Ok(chunk)
        })
    };
    let mut multipart = multer::Multipart::new(stream, boundary);
    let fail = |e: multer::Error| {
        if tripped.load(Ordering::Relaxed) {
            Error::PayloadTooLarge { limit: part_limit as u64 }
        } else {
            Error::invalid("body", format!("not a GraphQL multipart request: {e}"))
        }
    };

    let operations = read_part(&mut multipart, "operations", part_limit, &fail).await?;
    let map = read_part(&mut multipart, "map", part_limit, &fail).await?;
    let mut batch: BatchRequest = serde_json::from_slice(&operations)
        .map_err(|e| Error::invalid("operations", format!("not a GraphQL request in JSON: {e}")))?;
    let map: BTreeMap<String, Vec<String>> = serde_json::from_slice(&map)
        .map_err(|e| Error::invalid("map", format!("not a JSON object of file names to lists of paths: {e}")))?;
    if map.len() > 1 {
        return Err(Error::invalid("map", format!("a request carries at most one file; this map names {}", map.len())));
    }
    let Some((part, paths)) = map.into_iter().next() else {
        return Ok(batch);
    };
    let [path] = paths.as_slice() else {
        return Err(Error::invalid("map", format!("file {part:?}: give exactly one path for it")));
    };
    let field = multipart.next_field().await.map_err(fail)?.ok_or_else(|| {
        Error::invalid("map", format!("names file {part:?}, but the request has no part after the map"))
    })?;
    if field.name() != Some(part.as_str()) {
        return Err(Error::invalid(
            "map",
            format!("names file {part:?}, but the part after the map is {:?}", field.name().unwrap_or_default()),
        ));
    }
    // From here the file's reader (the service) bounds what it reads.
    allowance.store(u64::MAX, Ordering::Relaxed);
    let file = PendingFile::new(part, field.map_err(std::io::Error::other).boxed());
    attach(&mut batch, path, file)?;
    Ok(batch)
}

/// The whole of part `name`, which must come next; 413 past `limit`.
async fn read_part(
    multipart: &mut multer::Multipart<'static>,
    name: &str,
    limit: usize,
    fail: &impl Fn(multer::Error) -> Error,
) -> Result<Vec<u8>, Error> {
    let mut field = multipart.next_field().await.map_err(fail)?.ok_or_else(|| {
        Error::invalid(name, "missing: a GraphQL multipart request is `operations`, then `map`, then the file")
    })?;
    if field.name() != Some(name) {
        return Err(Error::invalid(
            name,
            format!(
                "expected part {name:?} here, not {:?} (the order is `operations`, `map`, then the file)",
                field.name().unwrap_or_default()
            ),
        ));
    }
    let mut value = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(fail)? {
        if value.len() + chunk.len() > limit {
            return Err(Error::PayloadTooLarge { limit: limit as u64 });
        }
        value.extend_from_slice(&chunk);
    }
    Ok(value)
}

/// Put `file` where `path` points (`variables.file`, or `0.variables.file`
/// in a batch): the variable becomes the file's `Upload` value, and the
/// file goes with that operation.
fn attach(batch: &mut BatchRequest, path: &str, file: PendingFile) -> Result<(), Error> {
    let unknown = || Error::invalid("map", format!("{path:?} is not a variable of the operations"));
    let (request, rest) = match batch {
        BatchRequest::Single(request) => (request, path),
        BatchRequest::Batch(requests) => {
            let (index, rest) = path.split_once('.').ok_or_else(unknown)?;
            let request = index.parse::<usize>().ok().and_then(|i| requests.get_mut(i)).ok_or_else(unknown)?;
            (request, rest)
        }
    };
    let mut parts = rest.strip_prefix("variables.").ok_or_else(unknown)?.split('.');
    let first = parts.next().ok_or_else(unknown)?;
    let mut value = request.variables.get_mut(first).ok_or_else(unknown)?;
    for part in parts {
        value = match value {
            async_graphql::Value::List(items) => part.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            async_graphql::Value::Object(fields) => fields.get_mut(part),
            _ => None,
        }
        .ok_or_else(unknown)?;
    }
    *value = file.value();
    request.data.insert(file);
    Ok(())
}
