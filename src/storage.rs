//! The staging and repository object stores and the keys inside them.
//!
//! Rule: callers never build object paths; the key functions here do
//! (DESIGN.md §5: `staging/<id>`, `quarantine/<id>` in the staging store,
//! `sha256/<ab>/<sha256>` in the repository store).

use std::sync::Arc;

use anyhow::Context;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::config::StorageConfig;

#[derive(Clone)]
pub struct Stores {
    pub staging: Arc<dyn ObjectStore>,
    pub repository: Arc<dyn ObjectStore>,
}

impl Stores {
    pub async fn from_config(config: &StorageConfig) -> anyhow::Result<Self> {
        let stores = Self {
            staging: open(&config.staging).context("storage.staging")?,
            repository: open(&config.repository).context("storage.repository")?,
        };
        init(stores.staging.as_ref()).await.context("storage.staging")?;
        init(stores.repository.as_ref()).await.context("storage.repository")?;
        Ok(stores)
    }
}

/// Open an object_store URL; `file://` folders are created when missing.
pub fn open(url: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let parsed = url::Url::parse(url).with_context(|| format!("not a URL: {url:?}"))?;
    if parsed.scheme() == "file" {
        let dir = parsed.to_file_path().map_err(|()| anyhow::anyhow!("not a local path: {url:?}"))?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(&dir).with_context(|| format!("opening {}", dir.display()))?;
        return Ok(Arc::new(store));
    }
    // S3 and friends: credentials and region come from the usual AWS_*
    // environment variables, read by object_store's builders.
    let options = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v));
    let (store, prefix) = object_store::parse_url_opts(&parsed, options).with_context(|| format!("opening {url:?}"))?;
    let store: Arc<dyn ObjectStore> =
        if prefix.as_ref().is_empty() { Arc::from(store) } else { Arc::new(PrefixStore::new(store, prefix)) };
    Ok(store)
}

/// Marker object written when a store is first opened; readiness reads it
/// back, which proves the store is there and readable.
fn marker() -> object_store::path::Path {
    object_store::path::Path::from(".otadepot-store")
}

/// Make sure the marker exists (a write the first time, a read after).
pub async fn init(store: &dyn ObjectStore) -> anyhow::Result<()> {
    match store.head(&marker()).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::NotFound { .. }) => {
            store
                .put(&marker(), object_store::PutPayload::from_static(b"otadepot object store\n"))
                .await
                .context("writing the store marker")?;
            Ok(())
        }
        Err(err) => Err(err).context("reading the store marker"),
    }
}

/// Readiness: the store answers and still holds its marker.
pub async fn check(store: &dyn ObjectStore) -> anyhow::Result<()> {
    store.head(&marker()).await.context("reading the store marker")?;
    Ok(())
}

/// Where an upload lands in the staging store.
pub fn staging_key(content_id: uuid::Uuid) -> object_store::path::Path {
    object_store::path::Path::from(format!("staging/{content_id}"))
}

/// Where infected content is kept, in the staging store, never served.
pub fn quarantine_key(content_id: uuid::Uuid) -> object_store::path::Path {
    object_store::path::Path::from(format!("quarantine/{content_id}"))
}

/// Content-addressed key in the repository store (`sha256` is lowercase hex).
pub fn repository_key(sha256: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!("sha256/{}/{sha256}", &sha256[..2]))
}

/// Prefix of a resumable (tus) upload's received pieces, in the staging store.
pub fn tus_prefix(content_id: uuid::Uuid) -> object_store::path::Path {
    object_store::path::Path::from(format!("tus/{content_id}"))
}

/// One received piece of a tus upload, named by its offset so that a
/// listing in key order is the upload in byte order.
pub fn tus_piece_key(content_id: uuid::Uuid, offset: u64) -> object_store::path::Path {
    object_store::path::Path::from(format!("tus/{content_id}/{offset:020}"))
}

/// Marks a content as being uploaded through tus (not a one-shot upload).
pub fn tus_marker_key(content_id: uuid::Uuid) -> object_store::path::Path {
    object_store::path::Path::from(format!("tus/{content_id}/created"))
}

/// Bytes read per step from a local file for a download: big enough to
/// keep up with nginx, small enough that 100 downloads stay far below
/// 100 MB (docs/benchmarks.md).
pub const DOWNLOAD_CHUNK: usize = 256 * 1024;
/// For one stream at a time (scan, promotion copy), where size is free.
pub const BULK_CHUNK: usize = 256 * 1024;

/// The bytes of a `get`, as a stream. A local file is read `chunk` bytes
/// per blocking read into a buffer that becomes the chunk itself (no
/// second copy); object_store's own stream reads 8 KiB per call, which
/// caps a download at a fifth of what the disk gives. Other stores stream
/// as they do.
pub fn object_stream(
    result: object_store::GetResult,
    chunk: usize,
) -> BoxStream<'static, std::io::Result<bytes::Bytes>> {
    match result.payload {
        object_store::GetResultPayload::File(file, _) => {
            let range = result.range;
            futures::stream::try_unfold((Some(file), range.start, range.end), move |(file, offset, end)| async move {
                let Some(mut file) = file else { return Ok(None) };
                if offset >= end {
                    return Ok(None);
                }
                let want = usize::try_from(end - offset).unwrap_or(usize::MAX).min(chunk);
                let (file, bytes) = tokio::task::spawn_blocking(move || {
                    use std::io::{Read, Seek};
                    file.seek(std::io::SeekFrom::Start(offset))?;
                    let mut buffer = Vec::with_capacity(want);
                    (&mut file).take(want as u64).read_to_end(&mut buffer)?;
                    Ok::<_, std::io::Error>((file, buffer))
                })
                .await
                .map_err(std::io::Error::other)??;
                if bytes.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "object shorter than its range",
                    ));
                }
                let next = offset + bytes.len() as u64;
                Ok(Some((bytes::Bytes::from(bytes), (Some(file), next, end))))
            })
            .boxed()
        }
        object_store::GetResultPayload::Stream(stream) => stream.map_err(std::io::Error::other).boxed(),
    }
}
