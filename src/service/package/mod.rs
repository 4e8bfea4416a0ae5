//! Software packages: ExoSense's `config_otau` manifest, stored as the
//! `otau_info` tag of an empty holder content, indexed in `package`.
//!
//! Rules:
//! - The tags are the source of truth: `otau_info` (`{"author", "product",
//!   "config_otau"}`, as in the ExoSense guide), `otadepot.files` (payload
//!   name → content id, for the uploaded files), `otadepot.models` (the
//!   compatible device model ids) and `otadepot.deprecated`. [`index`]
//!   derives the `package`, `package_model` and `package_file` rows from
//!   them, in the transaction that writes the tags; [`reindex`] rebuilds
//!   every row from the tags.
//! - A package's manifest never changes after creation (devices verify a
//!   signature over it): a new manifest is a new version.
//! - `(component, version)` is unique among packages that share a device
//!   model (or where either has none): two hardware models may each have
//!   their own firmware 1.0.0, one model cannot have two.
//!
//! Why one file of this size: the package is one state, the tags, and
//! everything here either writes those tags and derives the index from
//! them in the same transaction, or reads the index. The ExoSense path
//! (`createContent` with `otau_info`) shares the `otau_info` parsing and
//! the checks with `createSoftwarePackage`, since both end in the same
//! tags; only binding its payload to uploaded contents is its own
//! (`exosense.rs`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use entity::{content, content_tag, package, package_file, package_model};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Set,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::content::ContentState;
use crate::service::device_model::{self, DeviceModel};
use crate::service::pagination::{Page, PageRequest, cursor};
use crate::service::{WriteTx, catalog};

pub mod cache;
mod exosense;

pub use exosense::create_content;

pub use crate::service::catalog::{DEPRECATED_TAG, FILES_TAG, MODELS_TAG, OTAU_INFO_TAG, RESERVED_TAGS};
/// Manifest types a device is told how to handle.
pub const MANIFEST_TYPES: &[&str] = &["URL_LIST"];
/// The component a package versions when none is named.
pub const DEFAULT_COMPONENT: &str = "firmware";
/// Keys of `config_otau` that otadepot adds for the device.
const RESERVED_MANIFEST_KEYS: [&str; 2] = ["files", "signature"];
const MAX_PAYLOAD: usize = 256;

/// One uploaded file of a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageFile {
    pub name: String,
    pub content_id: Uuid,
    pub length: i64,
    pub sha256: Option<String>,
    pub md5: Option<String>,
    pub sha1: Option<String>,
    pub state: String,
}

#[derive(Clone, Debug)]
pub struct Package {
    pub model: package::Model,
    /// Who created it, as `otau_info.author` says.
    pub author: String,
    /// `otau_info.config_otau`, as stored.
    pub config_otau: Map<String, Value>,
    pub models: Vec<DeviceModel>,
    pub files: Vec<PackageFile>,
    /// Payload entries that are links (absolute http(s) URLs).
    pub links: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct NewPackage {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub kind: String,
    /// The installed component (`otau_info.product`); `component_field`
    /// names the argument it came from, for errors.
    pub component: Option<String>,
    pub component_field: &'static str,
    pub models: Vec<String>,
    pub files: Vec<Uuid>,
    pub links: Vec<String>,
}

// ---------------------------------------------------------------------------
// Validation shared by both ways in.

fn required_text(field: &str, value: &str, max: usize) -> Result<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(Error::invalid(field, format!("at most {max} characters, no control characters")));
    }
    Ok(value.to_owned())
}

fn validate_version(field: &str, value: &str) -> Result<String> {
    let value = required_text(field, value, 64)?;
    if value.chars().any(char::is_whitespace) {
        return Err(Error::invalid(field, "must not contain spaces"));
    }
    Ok(value)
}

fn validate_type(field: &str, value: &str) -> Result<String> {
    let value = required_text(field, value, 64)?;
    if !MANIFEST_TYPES.contains(&value.as_str()) {
        return Err(Error::invalid(
            field,
            format!("{value:?} is not a manifest type (one of {})", MANIFEST_TYPES.join(", ")),
        ));
    }
    Ok(value)
}

fn validate_component(field: &str, value: &str) -> Result<String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(Error::invalid(field, "1 to 64 characters: letters, digits, '_', '-' or '.'"));
    }
    Ok(value.to_owned())
}

/// A payload entry with a host is a link; one without is an uploaded file
/// (ExoSense: "Files stored in the IoT Connector will not have a host").
fn is_link(entry: &str) -> bool {
    entry.contains("://")
}

fn validate_link(field: &str, link: &str) -> Result<()> {
    let url = url::Url::parse(link).map_err(|e| Error::invalid(field, format!("{link:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid(field, format!("{link:?}: only absolute http(s) URLs with a host")));
    }
    if link.len() > 2048 {
        return Err(Error::invalid(field, "at most 2048 characters"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// createSoftwarePackage

pub async fn create(app: &App, ctx: &Ctx, input: NewPackage) -> Result<Package> {
    ctx.require(Permission::PackageWrite)?;
    let name = required_text("name", &input.name, 255)?;
    let version = validate_version("version", &input.version)?;
    let kind = validate_type("type", &input.kind)?;
    let component = validate_component(input.component_field, input.component.as_deref().unwrap_or(DEFAULT_COMPONENT))?;
    let description = input.description.unwrap_or_default().trim().to_owned();
    if description.chars().count() > 4096 {
        return Err(Error::invalid("description", "at most 4096 characters"));
    }
    if input.models.is_empty() {
        return Err(Error::invalid("models", "name at least one compatible device model"));
    }
    if input.files.is_empty() && input.links.is_empty() {
        return Err(Error::invalid("files", "a package needs at least one file or link (the payload is empty)"));
    }
    if input.files.len() + input.links.len() > MAX_PAYLOAD {
        return Err(Error::invalid("files", format!("at most {MAX_PAYLOAD} files and links")));
    }
    for (i, link) in input.links.iter().enumerate() {
        validate_link(&format!("links[{i}]"), link)?;
    }
    let (_, author) = ctx.actor.audit_identity();

    let mut tx = WriteTx::begin(app).await?;
    let models = device_model::resolve(tx.conn(), "models", &input.models).await?;
    let mut files: BTreeMap<String, Uuid> = BTreeMap::new();
    let mut payload: Vec<Value> = Vec::new();
    for (i, id) in input.files.iter().enumerate() {
        let field = format!("files[{i}]");
        let file = content::Entity::find_by_id(*id)
            .one(tx.conn())
            .await?
            .ok_or_else(|| Error::invalid(&field, format!("no content {id}")))?;
        check_promoted(&field, &file)?;
        if files.insert(file.name.clone(), file.id).is_some() {
            return Err(Error::invalid(&field, format!("two files are named {:?}; names must differ", file.name)));
        }
        payload.push(Value::String(file.name));
    }
    payload.extend(input.links.iter().cloned().map(Value::String));

    let otau_info = json!({
        "author": author,
        "product": component,
        "config_otau": { "version": version, "name": name, "description": description, "type": kind, "payload": payload },
    });
    let tags = vec![
        (OTAU_INFO_TAG.to_owned(), otau_info.to_string()),
        (FILES_TAG.to_owned(), serde_json::to_string(&files).map_err(Error::internal)?),
        (MODELS_TAG.to_owned(), json!(models.iter().map(|m| m.id.to_string()).collect::<Vec<_>>()).to_string()),
    ];
    let holder = crate::service::content::insert_manifest_holder(
        &mut tx,
        ctx,
        &format!("package_{component}_{version}.json"),
        &tags,
    )
    .await?;
    let model = index(&mut tx, ctx, &holder, &tags.into_iter().collect()).await?;
    tx.commit().await?;
    get_unchecked(&app.db, model.id).await
}

fn check_promoted(field: &str, file: &content::Model) -> Result<()> {
    if file.state != ContentState::Promoted.as_str() {
        return Err(Error::invalid(
            field,
            format!(
                "content {} is {}; only PROMOTED (scanned and clean) content can be in a package",
                file.id, file.state
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tags → index.

/// `otau_info`, parsed and checked.
#[derive(Debug)]
struct OtauInfo {
    author: String,
    /// `otau_info.product`.
    component: String,
    config: Map<String, Value>,
    name: String,
    version: String,
    kind: String,
    description: String,
    payload: Vec<String>,
}

fn parse_otau_info(raw: &str) -> Result<OtauInfo> {
    const F: &str = "otau_info";
    let value: Value = serde_json::from_str(raw).map_err(|e| Error::invalid(F, format!("is not JSON: {e}")))?;
    let Value::Object(mut info) = value else {
        return Err(Error::invalid(F, "must be a JSON object {\"author\", \"product\", \"config_otau\"}"));
    };
    let author = match info.remove("author") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(Error::invalid("otau_info.author", "must be a string")),
    };
    let component = match info.remove("product") {
        Some(Value::String(s)) => validate_component("otau_info.product", &s)?,
        None | Some(Value::Null) => return Err(Error::invalid("otau_info.product", "is required")),
        Some(_) => return Err(Error::invalid("otau_info.product", "must be a string")),
    };
    let Some(Value::Object(config)) = info.remove("config_otau") else {
        return Err(Error::invalid("otau_info.config_otau", "is required and must be a JSON object"));
    };
    let text = |key: &str| -> Result<Option<String>> {
        match config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Error::invalid(format!("otau_info.config_otau.{key}"), "must be a string")),
        }
    };
    let version = validate_version("otau_info.config_otau.version", &text("version")?.unwrap_or_default())?;
    let name = required_text("otau_info.config_otau.name", &text("name")?.unwrap_or_default(), 255)?;
    let kind = validate_type("otau_info.config_otau.type", &text("type")?.unwrap_or_default())?;
    let description = text("description")?.unwrap_or_default();
    for key in RESERVED_MANIFEST_KEYS {
        if config.contains_key(key) {
            return Err(Error::invalid(format!("otau_info.config_otau.{key}"), "is added by otadepot; leave it out"));
        }
    }
    let payload = match config.get("payload") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                _ => Err(Error::invalid(format!("otau_info.config_otau.payload[{i}]"), "must be a non-empty string")),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(Value::Array(_)) => return Err(Error::invalid("otau_info.config_otau.payload", "must not be empty")),
        _ => return Err(Error::invalid("otau_info.config_otau.payload", "is required: an array of files or links")),
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::invalid("otau_info.config_otau.payload", format!("at most {MAX_PAYLOAD} entries")));
    }
    for (i, entry) in payload.iter().enumerate() {
        if is_link(entry) {
            validate_link(&format!("otau_info.config_otau.payload[{i}]"), entry)?;
        }
    }
    Ok(OtauInfo { author, component, config, name, version, kind, description, payload })
}

/// Write the index rows of the package that `holder`'s `tags` describe,
/// refusing what `createSoftwarePackage` refuses.
pub(crate) async fn index(
    tx: &mut WriteTx,
    ctx: &Ctx,
    holder: &content::Model,
    tags: &BTreeMap<String, String>,
) -> Result<package::Model> {
    let (row, models, files) = derive(tx.conn(), holder, tags).await?;
    crate::service::audit::serialize_writes(tx.conn()).await?;
    check_unique(tx.conn(), &row, &models, None).await?;
    let row = package::ActiveModel::from(row).insert(tx.conn()).await?;
    insert_links(tx.conn(), row.id, &models, &files).await?;
    tx.audit(
        ctx,
        "package.create",
        ResourceKind::Package,
        &row.id.to_string(),
        json!({
            "content_id": holder.id, "component": row.component, "name": row.name, "version": row.version,
            "type": row.kind, "models": models.iter().map(|m| &m.name).collect::<Vec<_>>(),
            "files": files.iter().map(|(n, id)| json!({ "name": n, "content_id": id })).collect::<Vec<_>>(),
        }),
    )
    .await?;
    tx.notify(Event::ContentChanged(holder.id));
    Ok(row)
}

/// The index row (not yet inserted), its models and its files, from the tags.
async fn derive(
    conn: &impl ConnectionTrait,
    holder: &content::Model,
    tags: &BTreeMap<String, String>,
) -> Result<(package::Model, Vec<DeviceModel>, Vec<(String, Uuid)>)> {
    let raw = tags.get(OTAU_INFO_TAG).ok_or_else(|| Error::invalid("otau_info", "is required"))?;
    let info = parse_otau_info(raw)?;
    let bound: BTreeMap<String, String> = match tags.get(FILES_TAG) {
        None => BTreeMap::new(),
        Some(raw) => serde_json::from_str(raw)
            .map_err(|_| Error::invalid(FILES_TAG, "must be a JSON object of file name to content id"))?,
    };
    let mut files = Vec::new();
    for (i, entry) in info.payload.iter().enumerate() {
        if is_link(entry) {
            continue;
        }
        let field = format!("otau_info.config_otau.payload[{i}]");
        let id = bound
            .get(entry)
            .and_then(|id| id.parse::<Uuid>().ok())
            .ok_or_else(|| Error::invalid(&field, format!("no uploaded content is bound to {entry:?}")))?;
        let file = content::Entity::find_by_id(id)
            .one(conn)
            .await?
            .ok_or_else(|| Error::invalid(&field, format!("no content {id}")))?;
        check_promoted(&field, &file)?;
        if files.iter().any(|(name, _)| name == entry) {
            return Err(Error::invalid(field, format!("{entry:?} appears twice")));
        }
        files.push((entry.clone(), id));
    }
    let model_refs: Vec<String> = match tags.get(MODELS_TAG) {
        None => Vec::new(),
        Some(raw) => serde_json::from_str(raw)
            .map_err(|_| Error::invalid(MODELS_TAG, "must be a JSON array of device model ids or names"))?,
    };
    let models = device_model::resolve(conn, MODELS_TAG, &model_refs).await?;
    let deprecated = tags.get(DEPRECATED_TAG).is_some_and(|v| v == "true");
    let id = Uuid::now_v7();
    let created_at = holder.created_at;
    let row = package::Model {
        id,
        content_id: holder.id,
        version_key: version_key(&info.version, created_at, id),
        component: info.component,
        name: info.name,
        version: info.version,
        kind: info.kind,
        description: info.description,
        deprecated,
        created_by: holder.created_by.clone(),
        created_at,
        updated_at: Utc::now(),
        deleted_at: None,
    };
    Ok((row, models, files))
}

async fn insert_links(
    conn: &impl ConnectionTrait,
    package_id: Uuid,
    models: &[DeviceModel],
    files: &[(String, Uuid)],
) -> Result<()> {
    if !models.is_empty() {
        package_model::Entity::insert_many(
            models
                .iter()
                .map(|m| package_model::ActiveModel { package_id: Set(package_id), device_model_id: Set(m.id) }),
        )
        .exec(conn)
        .await?;
    }
    if !files.is_empty() {
        package_file::Entity::insert_many(files.iter().enumerate().map(|(i, (name, id))| package_file::ActiveModel {
            package_id: Set(package_id),
            position: Set(i32::try_from(i).unwrap_or(i32::MAX)),
            content_id: Set(*id),
            name: Set(name.clone()),
        }))
        .exec(conn)
        .await?;
    }
    Ok(())
}

/// CONFLICT when a live package of the same component and version shares a
/// device model with `row` (or either has none).
async fn check_unique(
    conn: &impl ConnectionTrait,
    row: &package::Model,
    models: &[DeviceModel],
    except: Option<Uuid>,
) -> Result<()> {
    let mut query = package::Entity::find()
        .filter(package::Column::Component.eq(row.component.as_str()))
        .filter(package::Column::Version.eq(row.version.as_str()))
        .filter(package::Column::DeletedAt.is_null());
    if let Some(except) = except {
        query = query.filter(package::Column::Id.ne(except));
    }
    let same = query.all(conn).await?;
    if same.is_empty() {
        return Ok(());
    }
    let ours: BTreeSet<Uuid> = models.iter().map(|m| m.id).collect();
    let theirs = load_models(conn, &same.iter().map(|p| p.id).collect::<Vec<_>>()).await?;
    for other in same {
        let their_models = theirs.get(&other.id).cloned().unwrap_or_default();
        let shared: Vec<&str> = their_models.iter().filter(|m| ours.contains(&m.id)).map(|m| m.name.as_str()).collect();
        if ours.is_empty() || their_models.is_empty() || !shared.is_empty() {
            let scope = if shared.is_empty() { String::new() } else { format!(" for model {}", shared.join(", ")) };
            return Err(Error::Conflict(format!(
                "package {} {} already exists{scope} (package {})",
                row.component, row.version, other.id
            )));
        }
    }
    Ok(())
}

/// Rebuild every index row from the holders' tags (`otadepot packages
/// reindex`): for when the index was lost or a migration changed it.
/// Returns how many packages were indexed.
pub async fn reindex(app: &App, ctx: &Ctx) -> Result<usize> {
    ctx.require(Permission::PackageWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let existing = package::Entity::find().all(tx.conn()).await?;
    let by_holder: BTreeMap<Uuid, package::Model> = existing.into_iter().map(|p| (p.content_id, p)).collect();
    package_file::Entity::delete_many().exec(tx.conn()).await?;
    package_model::Entity::delete_many().exec(tx.conn()).await?;
    let holders =
        content_tag::Entity::find().filter(content_tag::Column::Name.eq(OTAU_INFO_TAG)).all(tx.conn()).await?;
    let mut count = 0;
    for holder_tag in holders {
        let holder = crate::service::content::find(tx.conn(), holder_tag.content_id).await?;
        let tags: BTreeMap<String, String> = content_tag::Entity::find()
            .filter(content_tag::Column::ContentId.eq(holder.id))
            .all(tx.conn())
            .await?
            .into_iter()
            .map(|t| (t.name, t.value))
            .collect();
        let previous = by_holder.get(&holder.id);
        let deleted = holder.state == ContentState::Deleted.as_str();
        if deleted && previous.is_none() {
            continue;
        }
        let (mut row, models, files) = match derive(tx.conn(), &holder, &tags).await {
            Ok(derived) => derived,
            Err(err) if deleted => {
                tracing::warn!(content = %holder.id, error = %err, "deleted package holder no longer indexes; skipped");
                continue;
            }
            Err(err) => return Err(Error::invalid("otau_info", format!("content {}: {err}", holder.id))),
        };
        if let Some(previous) = previous {
            // Keep the id (deployments refer to it) and the deletion mark.
            row.id = previous.id;
            row.version_key = version_key(&row.version, row.created_at, row.id);
            row.deleted_at = previous.deleted_at;
            package::ActiveModel::from(row.clone()).reset_all().update(tx.conn()).await?;
        } else {
            package::ActiveModel::from(row.clone()).insert(tx.conn()).await?;
        }
        if row.deleted_at.is_none() {
            insert_links(tx.conn(), row.id, &models, &files).await?;
        }
        count += 1;
    }
    tx.audit(ctx, "package.reindex", ResourceKind::Package, "*", json!({ "packages": count })).await?;
    tx.commit().await?;
    Ok(count)
}

// ---------------------------------------------------------------------------
// Versions.

/// A key whose byte order is the order of versions: semantic versions
/// (an optional leading `v`) by SemVer precedence, after every other
/// version; other strings by creation time. Pure ASCII.
pub fn version_key(version: &str, created_at: DateTime<Utc>, id: Uuid) -> String {
    let text = version.strip_prefix('v').unwrap_or(version);
    match semver::Version::parse(text) {
        Ok(v) => {
            let mut key = format!("1{:020}.{:020}.{:020}", v.major, v.minor, v.patch);
            if v.pre.is_empty() {
                // A release sorts after all its pre-releases ('~' > '-').
                key.push('~');
            } else {
                key.push('-');
                for (i, ident) in v.pre.as_str().split('.').enumerate() {
                    if i > 0 {
                        // Lower than any character of an identifier below,
                        // so a shorter list of identifiers sorts first.
                        key.push('.');
                    }
                    match ident.parse::<u64>() {
                        // Numeric identifiers: numerically, before alphanumeric ones.
                        Ok(n) if !ident.starts_with('+') => key.push_str(&format!("0{n:020}")),
                        _ => {
                            key.push('1');
                            key.push_str(&hex::encode(ident.as_bytes()));
                        }
                    }
                }
            }
            key
        }
        Err(_) => format!("0{:020}.{}", created_at.timestamp_micros().max(0), id.simple()),
    }
}

// ---------------------------------------------------------------------------
// Reading.

async fn load_models(conn: &impl ConnectionTrait, packages: &[Uuid]) -> Result<BTreeMap<Uuid, Vec<DeviceModel>>> {
    let mut out: BTreeMap<Uuid, Vec<DeviceModel>> = BTreeMap::new();
    if packages.is_empty() {
        return Ok(out);
    }
    let links = package_model::Entity::find()
        .filter(package_model::Column::PackageId.is_in(packages.iter().copied()))
        .all(conn)
        .await?;
    let ids: BTreeSet<Uuid> = links.iter().map(|l| l.device_model_id).collect();
    let models: BTreeMap<Uuid, DeviceModel> = entity::device_model::Entity::find()
        .filter(entity::device_model::Column::Id.is_in(ids))
        .all(conn)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    for link in links {
        if let Some(model) = models.get(&link.device_model_id) {
            out.entry(link.package_id).or_default().push(model.clone());
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(out)
}

/// Models, files and manifests of many packages, in a fixed number of queries.
async fn attach(conn: &impl ConnectionTrait, rows: Vec<package::Model>) -> Result<Vec<Package>> {
    let ids: Vec<Uuid> = rows.iter().map(|p| p.id).collect();
    let mut models = load_models(conn, &ids).await?;
    let mut files: BTreeMap<Uuid, Vec<PackageFile>> = BTreeMap::new();
    let mut otau: BTreeMap<Uuid, String> = BTreeMap::new();
    if !ids.is_empty() {
        let links = package_file::Entity::find()
            .filter(package_file::Column::PackageId.is_in(ids.iter().copied()))
            .order_by_asc(package_file::Column::Position)
            .all(conn)
            .await?;
        let contents: BTreeMap<Uuid, content::Model> = content::Entity::find()
            .filter(content::Column::Id.is_in(links.iter().map(|l| l.content_id).collect::<BTreeSet<_>>()))
            .all(conn)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        for link in links {
            let Some(c) = contents.get(&link.content_id) else { continue };
            files.entry(link.package_id).or_default().push(PackageFile {
                name: link.name,
                content_id: c.id,
                length: c.length,
                sha256: c.sha256.clone(),
                md5: c.md5.clone(),
                sha1: c.sha1.clone(),
                state: c.state.clone(),
            });
        }
        let holders: Vec<Uuid> = rows.iter().map(|p| p.content_id).collect();
        for tag in content_tag::Entity::find()
            .filter(content_tag::Column::ContentId.is_in(holders))
            .filter(content_tag::Column::Name.eq(OTAU_INFO_TAG))
            .all(conn)
            .await?
        {
            otau.insert(tag.content_id, tag.value);
        }
    }
    rows.into_iter()
        .map(|row| {
            let raw = otau.get(&row.content_id).ok_or_else(|| {
                Error::internal(anyhow::anyhow!(
                    "package {} lost its otau_info tag; run `otadepot packages reindex`",
                    row.id
                ))
            })?;
            let info = parse_otau_info(raw).map_err(|e| Error::internal(anyhow::anyhow!("package {}: {e}", row.id)))?;
            let links = info.payload.iter().filter(|e| is_link(e)).cloned().collect();
            Ok(Package {
                author: info.author,
                config_otau: info.config,
                models: models.remove(&row.id).unwrap_or_default(),
                files: files.remove(&row.id).unwrap_or_default(),
                links,
                model: row,
            })
        })
        .collect()
}

/// A package by id, deleted or not (deployments keep theirs).
pub(crate) async fn get_any(conn: &impl ConnectionTrait, id: Uuid) -> Result<Package> {
    let row = package::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Package, id.to_string()))?;
    Ok(attach(conn, vec![row]).await?.remove(0))
}

async fn get_unchecked(conn: &impl ConnectionTrait, id: Uuid) -> Result<Package> {
    let row = catalog::live_package(conn, id).await?;
    Ok(attach(conn, vec![row]).await?.remove(0))
}

pub async fn get(app: &App, ctx: &Ctx, id: Uuid) -> Result<Package> {
    ctx.require(Permission::PackageRead)?;
    get_unchecked(&app.db, id).await
}

#[derive(Clone, Debug, Default)]
pub struct PackageFilter {
    pub model: Option<Uuid>,
    pub component: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub deprecated: Option<bool>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PackageOrder {
    /// Newest first.
    #[default]
    CreatedAt,
    /// Highest version first (see [`version_key`]).
    Version,
}

const CURSOR_CREATED: &str = "package";
const CURSOR_VERSION: &str = "package-version";

pub async fn list(
    app: &App,
    ctx: &Ctx,
    filter: &PackageFilter,
    order: PackageOrder,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<Package>> {
    ctx.require(Permission::PackageRead)?;
    let mut condition = Condition::all().add(package::Column::DeletedAt.is_null());
    if let Some(model) = filter.model {
        let ids = package_model::Entity::find()
            .select_only()
            .column(package_model::Column::PackageId)
            .filter(package_model::Column::DeviceModelId.eq(model))
            .into_query();
        condition = condition.add(package::Column::Id.in_subquery(ids));
    }
    if let Some(component) = &filter.component {
        condition = condition.add(package::Column::Component.eq(component.as_str()));
    }
    if let Some(name) = &filter.name {
        condition = condition.add(package::Column::Name.eq(name.as_str()));
    }
    if let Some(version) = &filter.version {
        condition = condition.add(package::Column::Version.eq(version.as_str()));
    }
    if let Some(kind) = &filter.kind {
        condition = condition.add(package::Column::Kind.eq(kind.as_str()));
    }
    if let Some(deprecated) = filter.deprecated {
        condition = condition.add(package::Column::Deprecated.eq(deprecated));
    }
    let total_count = package::Entity::find().filter(condition.clone()).count(&app.db).await?;
    let mut query = package::Entity::find().filter(condition);
    let limit;
    match order {
        PackageOrder::CreatedAt => {
            let page = PageRequest::parse_uuid(CURSOR_CREATED, first, after)?;
            if let Some(after) = page.after {
                query = query.filter(package::Column::Id.lt(after));
            }
            query = query.order_by_desc(package::Column::Id);
            limit = page.first;
        }
        PackageOrder::Version => {
            let page = PageRequest::parse_string(CURSOR_VERSION, first, after)?;
            if let Some(after) = &page.after {
                let (key, id) = after
                    .rsplit_once('|')
                    .and_then(|(key, id)| Some((key.to_owned(), id.parse::<Uuid>().ok()?)))
                    .ok_or_else(|| Error::invalid("after", "not a cursor of this list"))?;
                query = query.filter(Condition::any().add(package::Column::VersionKey.lt(key.as_str())).add(
                    Condition::all().add(package::Column::VersionKey.eq(key.as_str())).add(package::Column::Id.lt(id)),
                ));
            }
            query = query.order_by_desc(package::Column::VersionKey).order_by_desc(package::Column::Id);
            limit = page.first;
        }
    }
    let mut rows = query.limit(limit + 1).all(&app.db).await?;
    let has_next_page = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let items = attach(&app.db, rows).await?;
    Ok(Page {
        items: items
            .into_iter()
            .map(|p| {
                let cursor = match order {
                    PackageOrder::CreatedAt => cursor(CURSOR_CREATED, p.model.id),
                    PackageOrder::Version => cursor(CURSOR_VERSION, format!("{}|{}", p.model.version_key, p.model.id)),
                };
                (cursor, p)
            })
            .collect(),
        has_next_page,
        total_count,
    })
}

// ---------------------------------------------------------------------------
// Changes after creation.

/// Set (or clear) the deprecated mark: deprecated packages stay readable
/// and installed, but are not applied to devices any more.
pub async fn deprecate(app: &App, ctx: &Ctx, id: Uuid, deprecated: bool) -> Result<Package> {
    ctx.require(Permission::PackageWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let row = catalog::live_package(tx.conn(), id).await?;
    if row.deprecated != deprecated {
        let tag = content_tag::Entity::delete_many()
            .filter(content_tag::Column::ContentId.eq(row.content_id))
            .filter(content_tag::Column::Name.eq(DEPRECATED_TAG));
        tag.exec(tx.conn()).await?;
        if deprecated {
            content_tag::ActiveModel {
                content_id: Set(row.content_id),
                name: Set(DEPRECATED_TAG.to_owned()),
                value: Set("true".to_owned()),
            }
            .insert(tx.conn())
            .await?;
        }
        package::Entity::update_many()
            .col_expr(package::Column::Deprecated, Expr::value(deprecated))
            .col_expr(package::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(package::Column::Id.eq(id))
            .exec(tx.conn())
            .await?;
        let action = if deprecated { "package.deprecate" } else { "package.undeprecate" };
        tx.audit(
            ctx,
            action,
            ResourceKind::Package,
            &id.to_string(),
            json!({ "component": row.component, "version": row.version }),
        )
        .await?;
        tx.notify(Event::ContentChanged(row.content_id));
    }
    tx.commit().await?;
    get_unchecked(&app.db, id).await
}

/// Replace the compatible device models (the manifest does not change).
pub async fn set_models(app: &App, ctx: &Ctx, id: Uuid, models: Vec<String>) -> Result<Package> {
    ctx.require(Permission::PackageWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let row = catalog::live_package(tx.conn(), id).await?;
    let resolved = device_model::resolve(tx.conn(), "models", &models).await?;
    if resolved.is_empty() {
        return Err(Error::invalid("models", "name at least one compatible device model"));
    }
    crate::service::audit::serialize_writes(tx.conn()).await?;
    check_unique(tx.conn(), &row, &resolved, Some(id)).await?;
    let before: Vec<String> =
        load_models(tx.conn(), &[id]).await?.remove(&id).unwrap_or_default().into_iter().map(|m| m.name).collect();
    content_tag::Entity::delete_many()
        .filter(content_tag::Column::ContentId.eq(row.content_id))
        .filter(content_tag::Column::Name.eq(MODELS_TAG))
        .exec(tx.conn())
        .await?;
    content_tag::ActiveModel {
        content_id: Set(row.content_id),
        name: Set(MODELS_TAG.to_owned()),
        value: Set(json!(resolved.iter().map(|m| m.id.to_string()).collect::<Vec<_>>()).to_string()),
    }
    .insert(tx.conn())
    .await?;
    package_model::Entity::delete_many().filter(package_model::Column::PackageId.eq(id)).exec(tx.conn()).await?;
    insert_links(tx.conn(), id, &resolved, &[]).await?;
    package::Entity::update_many()
        .col_expr(package::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(package::Column::Id.eq(id))
        .exec(tx.conn())
        .await?;
    tx.audit(
        ctx,
        "package.set_models",
        ResourceKind::Package,
        &id.to_string(),
        json!({ "before": before, "after": resolved.iter().map(|m| &m.name).collect::<Vec<_>>() }),
    )
    .await?;
    tx.notify(Event::ContentChanged(row.content_id));
    tx.commit().await?;
    get_unchecked(&app.db, id).await
}

/// Delete a package: its holder content becomes DELETED, the index row is
/// kept (marked deleted) for history. A CONFLICT while a scheduled, running
/// or paused deployment uses it.
pub async fn delete(app: &App, ctx: &Ctx, id: Uuid) -> Result<Package> {
    ctx.require(Permission::PackageWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let row = catalog::live_package(tx.conn(), id).await?;
    let active = crate::service::deployment::active_for_package(tx.conn(), id).await?;
    if active > 0 {
        return Err(Error::Conflict(format!(
            "package {} {} is used by {active} active deployment(s); cancel them first",
            row.component, row.version
        )));
    }
    let package = attach(tx.conn(), vec![row.clone()]).await?.remove(0);
    let now = Utc::now();
    package::Entity::update_many()
        .col_expr(package::Column::DeletedAt, Expr::value(now))
        .col_expr(package::Column::UpdatedAt, Expr::value(now))
        .filter(package::Column::Id.eq(id))
        .exec(tx.conn())
        .await?;
    // The files are free to be deleted once no live package names them.
    package_file::Entity::delete_many().filter(package_file::Column::PackageId.eq(id)).exec(tx.conn()).await?;
    package_model::Entity::delete_many().filter(package_model::Column::PackageId.eq(id)).exec(tx.conn()).await?;
    crate::service::content::mark_deleted(&mut tx, row.content_id).await?;
    tx.audit(
        ctx,
        "package.delete",
        ResourceKind::Package,
        &id.to_string(),
        json!({ "content_id": row.content_id, "component": row.component, "version": row.version }),
    )
    .await?;
    tx.commit().await?;
    Ok(package)
}

// ---------------------------------------------------------------------------
// The device manifest.

/// Repository URL of a package file (devices authenticate to fetch it).
pub fn file_url(app: &App, file: &PackageFile) -> String {
    let name = url::form_urlencoded::byte_serialize(file.name.as_bytes()).collect::<String>().replace('+', "%20");
    format!("{}/repo/{}/{name}", app.public_url(), file.content_id)
}

/// What a device receives: the `config_otau` fields, each uploaded file
/// resolved to its repository URL, `files` with their digests, and an
/// Ed25519 `signature` over the canonical JSON of all the rest
/// (docs/manifests.md).
pub fn device_manifest(app: &App, package: &Package) -> Result<Value> {
    manifest_with_urls(app, package, |file| file_url(app, file))
}

/// The manifest a device gets with its update: file URLs signed for that
/// device's update until `grant.exp` (no credential needed to fetch them;
/// Range works; checked again at download time, `service/device_download.rs`).
pub(crate) fn device_manifest_for(
    app: &App,
    package: &Package,
    grant: &crate::service::device_download::DeviceGrant<'_>,
) -> Result<Value> {
    manifest_with_urls(app, package, |file| {
        format!(
            "{}?{}",
            file_url(app, file),
            crate::service::device_download::signed_query(app, file.content_id, grant)
        )
    })
}

fn manifest_with_urls(app: &App, package: &Package, url_of: impl Fn(&PackageFile) -> String) -> Result<Value> {
    let mut manifest = package.config_otau.clone();
    let by_name: BTreeMap<&str, &PackageFile> = package.files.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut files = Vec::new();
    let mut payload = Vec::new();
    for entry in manifest.get("payload").and_then(Value::as_array).into_iter().flatten() {
        let entry = entry.as_str().unwrap_or_default();
        if is_link(entry) {
            payload.push(Value::String(entry.to_owned()));
            continue;
        }
        let file = by_name.get(entry).ok_or_else(|| {
            Error::internal(anyhow::anyhow!("package {}: payload {entry:?} is bound to no file", package.model.id))
        })?;
        let (Some(sha256), true) = (&file.sha256, file.state == ContentState::Promoted.as_str()) else {
            return Err(Error::InvalidState(format!(
                "package {}: file {:?} (content {}) is {}, not PROMOTED",
                package.model.id, file.name, file.content_id, file.state
            )));
        };
        let url = url_of(file);
        payload.push(Value::String(url.clone()));
        files.push(json!({ "name": file.name, "url": url, "length": file.length, "sha256": sha256, "md5": file.md5 }));
    }
    manifest.insert("payload".into(), Value::Array(payload));
    manifest.insert("files".into(), Value::Array(files));
    let signed = crate::canonical_json::to_string(&Value::Object(manifest.clone()));
    let (kid, signature) = app.manifest_signer.sign(signed.as_bytes());
    manifest.insert("signature".into(), json!({ "alg": crate::signing::ALGORITHM, "kid": kid, "value": signature }));
    Ok(Value::Object(manifest))
}

pub async fn manifest(app: &App, ctx: &Ctx, id: Uuid) -> Result<Value> {
    ctx.require(Permission::PackageRead)?;
    let package = get_unchecked(&app.db, id).await?;
    device_manifest(app, &package)
}

/// The published manifest keys, for `signingKeys`.
pub fn signing_keys(app: &App, ctx: &Ctx) -> Result<Vec<crate::signing::PublicKey>> {
    ctx.require(Permission::PackageRead)?;
    Ok(public_keys(app).to_vec())
}

/// The same keys for `/.well-known/otadepot/keys`: public keys are public,
/// so this needs no permission (firmware fetches them anonymously).
pub fn public_keys(app: &App) -> &[crate::signing::PublicKey] {
    app.manifest_signer.keys()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &str) -> String {
        version_key(v, Utc::now(), Uuid::now_v7())
    }

    #[test]
    fn semantic_versions_sort_by_precedence() {
        // SemVer 2.0 §11's example, in ascending order, plus a few more.
        let ordered = [
            "0.9.99",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "v1.0.1",
            "1.2.0",
            "1.10.0",
            "10.0.0",
        ];
        for pair in ordered.windows(2) {
            assert!(key(pair[0]) < key(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert!(key("alpha-b-not-semver") < key("0.0.1"), "other strings sort below semantic versions");
    }

    #[test]
    fn other_versions_sort_by_creation_time() {
        let early = version_key("08-14-2021", DateTime::from_timestamp(1_000, 0).unwrap(), Uuid::now_v7());
        let late = version_key("01-01-2020", DateTime::from_timestamp(2_000, 0).unwrap(), Uuid::now_v7());
        assert!(early < late);
    }

    #[test]
    fn links_and_files_are_told_apart_by_a_host() {
        assert!(is_link("https://mycontentserver.com/file1"));
        assert!(!is_link("firmware_updatev102.txt"));
        assert!(validate_link("l", "ftp://example.com/x").is_err());
        assert!(validate_link("l", "http://").is_err());
        assert!(validate_link("l", "http://example.com/file1").is_ok());
    }

    #[test]
    fn the_seed_otau_info_parses() {
        let raw = r#"{"author":"user@example.com","product":"myconnector","config_otau":{"version":"1.0.1","name":"firmware update","description":"firmware update","type":"URL_LIST","payload":["firmware_updatev101.txt"]}}"#;
        let info = parse_otau_info(raw).unwrap();
        assert_eq!((info.component.as_str(), info.version.as_str()), ("myconnector", "1.0.1"));
        assert_eq!(info.payload, vec!["firmware_updatev101.txt"]);
        let err =
            parse_otau_info(r#"{"product":"p","config_otau":{"version":"1","name":"n","type":"ZIP","payload":["a"]}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("otau_info.config_otau.type"), "{err}");
    }
}
