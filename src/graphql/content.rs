//! Content: `createContent` (the ExoSense shape, as-is), `uploadContent`
//! (the GraphQL multipart request), `content`, `contents`.

use async_graphql::{
    Context, Enum, ID, InputObject, InputValueError, InputValueResult, Json, Object, Result, Scalar, ScalarType,
    SimpleObject, Value,
};
use chrono::{DateTime, Utc};

use super::authz::{Guarded, Readable};
use super::connection::{Conn, from_page};
use super::ids::parse_id;
use super::upload::Upload;
use super::{app, caller};
use crate::error::{Error, ResourceKind};
use crate::service::authz::ObjectKind;
use crate::service::content as service;

/// A tag value: a string, or a number (kept as its decimal text), as the
/// ExoSense API sends both.
pub struct TagValue(String);

#[Scalar(name = "TagValue")]
impl ScalarType for TagValue {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(s) => Ok(TagValue(s)),
            Value::Number(n) => Ok(TagValue(n.to_string())),
            Value::Boolean(b) => Ok(TagValue(b.to_string())),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.clone())
    }
}

#[derive(InputObject)]
pub struct TagInput {
    name: String,
    value: TagValue,
}

/// ExoSense's `ContentInput`, field names as in its API.
#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ContentInput {
    /// Metadata only (never a path).
    name: String,
    content_type: String,
    /// firmware, application, config, script, manifest, ...
    #[graphql(name = "type")]
    kind: String,
    /// Exact size in bytes; the upload must match it.
    length: i64,
    tags: Option<Vec<TagInput>>,
    product_id: Option<String>,
    /// Hex SHA-256 the upload must match, when given.
    #[graphql(name = "sha256")]
    sha256: Option<String>,
}

/// `uploadContent`'s content; the file comes beside it, as `file`.
#[derive(InputObject)]
pub struct UploadContentInput {
    /// Metadata only (never a path).
    name: String,
    /// firmware, application, config, script, manifest, ...
    #[graphql(name = "type")]
    kind: String,
    content_type: String,
    /// Exact size in bytes; the file must match it.
    length: i64,
    /// Hex SHA-256 the file must match, when given.
    sha256: Option<String>,
    tags: Option<Vec<TagInput>>,
}

/// Where and how to send the bytes: a multipart POST of every field of
/// `inputs` plus the file in `field` to `url` (or a PUT of the raw bytes).
#[derive(SimpleObject)]
pub struct ContentUpload {
    id: ID,
    url: String,
    inputs: Json<serde_json::Value>,
    method: String,
    field: String,
    enctype: String,
    expires_at: DateTime<Utc>,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(
    name = "ContentState",
    remote = "crate::service::content::ContentState",
    rename_items = "SCREAMING_SNAKE_CASE"
)]
pub enum ContentStateGql {
    AwaitingUpload,
    Uploading,
    Staged,
    Scanning,
    Clean,
    Promoted,
    Quarantined,
    ScanFailed,
    Deleted,
}

#[derive(SimpleObject)]
pub struct Tag {
    name: String,
    value: String,
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Content {
    #[graphql(skip)]
    inner: service::Content,
    id: ID,
    name: String,
    content_type: String,
    #[graphql(name = "type")]
    kind: String,
    length: i64,
    /// Of the bytes received (null until uploaded).
    sha256: Option<String>,
    md5: Option<String>,
    /// SHA-1 of the bytes received, for hawkBit DDI clients (null until
    /// uploaded, and for content stored before SHA-1 was computed until
    /// the backfill job has read it).
    sha1: Option<String>,
    product_id: Option<String>,
    state: ContentStateGql,
    /// CLEAN, INFECTED, ERROR or SKIPPED, once scanned.
    scan_verdict: Option<String>,
    /// The signature clamd matched, for infected content.
    scan_signature: Option<String>,
    scan_error: Option<String>,
    scanned_at: Option<DateTime<Utc>>,
    tags: Vec<Tag>,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Readable for Content {
    const KIND: ObjectKind = ObjectKind::Content;
}

impl From<service::Content> for Content {
    fn from(content: service::Content) -> Self {
        let inner = content.clone();
        let m = content.model;
        Self {
            inner,
            id: ID(m.id.to_string()),
            name: m.name,
            content_type: m.content_type,
            kind: m.kind,
            length: m.length,
            sha256: m.sha256,
            md5: m.md5,
            sha1: m.sha1,
            product_id: m.product_id,
            state: content.state.into(),
            scan_verdict: m.scan_verdict,
            scan_signature: m.scan_signature,
            scan_error: m.scan_error,
            scanned_at: m.scanned_at,
            tags: content.tags.into_iter().map(|(name, value)| Tag { name, value }).collect(),
            created_by: m.created_by,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[async_graphql::ComplexObject]
impl Content {
    /// A signed URL that downloads this content without a token, valid for
    /// `ttlSeconds` (60 s to 7 days, default an hour); null until the
    /// content is PROMOTED.
    async fn download_url(&self, ctx: &Context<'_>, ttl_seconds: Option<i64>) -> Result<Option<String>> {
        Ok(service::download_url(app(ctx), caller(ctx), &self.inner, ttl_seconds.unwrap_or(3600))?)
    }
}

#[derive(InputObject)]
pub struct TagFilter {
    name: String,
    /// Any value when absent.
    value: Option<String>,
}

#[derive(InputObject, Default)]
pub struct ContentFilter {
    /// Deleted content is listed only when asked for by state.
    state: Option<ContentStateGql>,
    #[graphql(name = "type")]
    kind: Option<String>,
    product_id: Option<String>,
    tag: Option<TagFilter>,
}

#[derive(Default)]
pub struct ContentQuery;

#[Object]
impl ContentQuery {
    async fn content(&self, ctx: &Context<'_>, id: ID) -> Result<Content> {
        Ok(service::get(app(ctx), caller(ctx), parse_id("id", ResourceKind::Content, &id)?).await?.into())
    }

    /// Content, newest first.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn contents(
        &self,
        ctx: &Context<'_>,
        filter: Option<ContentFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<Content>> {
        let filter = filter.unwrap_or_default();
        let filter = service::ContentFilter {
            state: filter.state.map(Into::into),
            kind: filter.kind,
            product_id: filter.product_id,
            tag: filter.tag.map(|t| (t.name, t.value)),
        };
        let page = service::list(app(ctx), caller(ctx), &filter, first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), Content::from))
    }
}

#[derive(InputObject)]
pub struct SetContentTagsInput {
    id: ID,
    /// The complete new set of tags.
    tags: Vec<TagInput>,
}

#[derive(InputObject)]
pub struct ContentIdInput {
    id: ID,
}

#[derive(SimpleObject)]
pub struct ContentPayload {
    /// Null without CONTENT_READ.
    content: Guarded<Content>,
}

impl From<service::Content> for ContentPayload {
    fn from(content: service::Content) -> Self {
        Self { content: Guarded::new(content.into()) }
    }
}

#[derive(Default)]
pub struct ContentSubscription;

#[async_graphql::Subscription]
impl ContentSubscription {
    /// The content now, then after each change of its state or tags.
    async fn content_updated(&self, ctx: &Context<'_>, id: ID) -> Result<impl futures::Stream<Item = Content> + use<>> {
        use futures::StreamExt;
        let stream = service::watch(app(ctx), caller(ctx), parse_id("id", ResourceKind::Content, &id)?).await?;
        Ok(stream.map(Content::from))
    }
}

#[derive(Default)]
pub struct ContentMutation;

#[Object]
impl ContentMutation {
    /// Create a content awaiting its bytes and return where to send them.
    /// Takes `content` (not `input`) and snake_case fields to stay
    /// compatible with ExoSense clients.
    async fn create_content(&self, ctx: &Context<'_>, content: Option<ContentInput>) -> Result<Option<ContentUpload>> {
        let Some(input) = content else {
            return Err(Error::invalid("content", "is required").into());
        };
        // With `otau_info` the content is a package's holder: the package
        // service makes both (and hands plain contents to the content one).
        let (_, form) = crate::service::package::create_content(
            app(ctx),
            caller(ctx),
            service::NewContent {
                name: input.name,
                content_type: input.content_type,
                kind: input.kind,
                length: input.length,
                tags: input.tags.unwrap_or_default().into_iter().map(|t| (t.name, t.value.0)).collect(),
                product_id: input.product_id,
                sha256: input.sha256,
            },
        )
        .await?;
        Ok(Some(ContentUpload {
            id: ID(form.id.to_string()),
            url: form.url,
            inputs: Json(form.inputs),
            method: form.method.into(),
            field: form.field.into(),
            enctype: form.enctype.into(),
            expires_at: form.expires_at,
        }))
    }

    /// Create a content and upload its file in one GraphQL multipart
    /// request (github.com/jaydenseric/graphql-multipart-request-spec, one
    /// file per request). The file streams into staging; the content is
    /// STAGED and its scan queued when this returns. A failed upload leaves
    /// the content it created DELETED.
    async fn upload_content(
        &self,
        ctx: &Context<'_>,
        input: UploadContentInput,
        file: Upload,
    ) -> Result<Option<ContentPayload>> {
        let new = service::NewContent {
            name: input.name,
            content_type: input.content_type,
            kind: input.kind,
            length: input.length,
            tags: input.tags.unwrap_or_default().into_iter().map(|t| (t.name, t.value.0)).collect(),
            product_id: None,
            sha256: input.sha256,
        };
        Ok(Some(service::create_with_upload(app(ctx), caller(ctx), new, file.take(ctx)).await?.into()))
    }

    /// Replace a content's tags.
    async fn set_content_tags(&self, ctx: &Context<'_>, input: SetContentTagsInput) -> Result<ContentPayload> {
        let tags = input.tags.into_iter().map(|t| (t.name, t.value.0)).collect();
        Ok(service::set_tags(app(ctx), caller(ctx), parse_id("id", ResourceKind::Content, &input.id)?, tags)
            .await?
            .into())
    }

    /// Mark a content DELETED (it is never served again).
    async fn delete_content(&self, ctx: &Context<'_>, input: ContentIdInput) -> Result<ContentPayload> {
        Ok(service::delete(app(ctx), caller(ctx), parse_id("id", ResourceKind::Content, &input.id)?).await?.into())
    }

    /// Scan a SCAN_FAILED content again.
    async fn rescan_content(&self, ctx: &Context<'_>, input: ContentIdInput) -> Result<ContentPayload> {
        Ok(service::rescan(app(ctx), caller(ctx), parse_id("id", ResourceKind::Content, &input.id)?).await?.into())
    }

    /// Promote a CLEAN content (with manual promotion).
    async fn promote_content(&self, ctx: &Context<'_>, input: ContentIdInput) -> Result<ContentPayload> {
        Ok(service::promote(app(ctx), caller(ctx), parse_id("id", ResourceKind::Content, &input.id)?).await?.into())
    }
}
