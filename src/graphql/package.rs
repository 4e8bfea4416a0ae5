//! Software packages: `createSoftwarePackage`, `package`, `packages`,
//! `packageManifest`, `signingKeys`, `deprecatePackage`,
//! `setPackageModels`, `deletePackage`. (The ExoSense way in is
//! `createContent` with an `otau_info` tag.)

use async_graphql::{Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::authz::{Guarded, Readable};
use super::connection::{Conn, from_page};
use super::device_model::DeviceModel;
use super::ids::parse_id;
use super::{app, caller};
use crate::error::ResourceKind;
use crate::service::authz::ObjectKind;
use crate::service::package as service;

#[derive(SimpleObject)]
pub struct PackageFile {
    /// The payload entry: the content's name, without a host.
    name: String,
    content_id: ID,
    /// Where devices download it (with their credential).
    url: String,
    length: i64,
    sha256: Option<String>,
    md5: Option<String>,
    /// For hawkBit DDI clients (see `Content.sha1`).
    sha1: Option<String>,
}

#[derive(SimpleObject)]
pub struct Package {
    id: ID,
    /// The content whose `otau_info` tag holds the manifest.
    content_id: ID,
    /// The component the package versions on a device (`otau_info.product`),
    /// matched against a device's `installed { component }`.
    component: String,
    /// The old name of `component`.
    #[graphql(deprecation = "use component: one name for the installed component, as on devices")]
    product: String,
    name: String,
    version: String,
    description: String,
    /// The manifest type (URL_LIST).
    #[graphql(name = "type")]
    kind: String,
    /// `otau_info.author`.
    author: String,
    deprecated: bool,
    /// Compatible device models (null without DEVICE_READ).
    models: Guarded<Vec<DeviceModel>>,
    /// The uploaded files of the payload, in payload order.
    files: Vec<PackageFile>,
    /// The payload entries that are links.
    links: Vec<String>,
    /// `config_otau` as stored (payload entries as given).
    config_otau: Json<serde_json::Value>,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Readable for Package {
    const KIND: ObjectKind = ObjectKind::Package;
}

impl Package {
    fn new(app: &crate::app::App, p: service::Package) -> Self {
        let files = p
            .files
            .iter()
            .map(|f| PackageFile {
                name: f.name.clone(),
                content_id: ID(f.content_id.to_string()),
                url: service::file_url(app, f),
                length: f.length,
                sha256: f.sha256.clone(),
                md5: f.md5.clone(),
                sha1: f.sha1.clone(),
            })
            .collect();
        let m = p.model;
        Self {
            id: ID(m.id.to_string()),
            content_id: ID(m.content_id.to_string()),
            product: m.component.clone(),
            component: m.component,
            name: m.name,
            version: m.version,
            description: m.description,
            kind: m.kind,
            author: p.author,
            deprecated: m.deprecated,
            models: Guarded::new(p.models.into_iter().map(Into::into).collect()),
            files,
            links: p.links,
            config_otau: Json(serde_json::Value::Object(p.config_otau)),
            created_by: m.created_by,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// A public key that verifies device manifests.
#[derive(SimpleObject)]
pub struct SigningKey {
    kid: String,
    /// Ed25519.
    algorithm: String,
    /// The raw 32-byte key, base64.
    public_key: String,
    /// SubjectPublicKeyInfo PEM.
    public_key_pem: String,
    /// Whether it signs new manifests (the others are published for rotation).
    active: bool,
}

#[derive(InputObject)]
pub struct CreateSoftwarePackageInput {
    /// Human-readable, e.g. "Security update".
    name: String,
    version: String,
    description: Option<String>,
    /// The manifest type: URL_LIST.
    #[graphql(name = "type")]
    kind: String,
    /// The component the package versions on a device (default `firmware`).
    component: Option<String>,
    /// Deprecated: the old name of `component` (give one of the two).
    product: Option<String>,
    /// Compatible device models (ids or model names); at least one.
    models: Vec<ID>,
    /// PROMOTED contents; the payload names them without a host.
    files: Option<Vec<ID>>,
    /// Absolute http(s) URLs, stored as given.
    links: Option<Vec<String>>,
}

#[derive(InputObject, Default)]
pub struct PackageFilter {
    /// Compatible with this device model.
    model: Option<ID>,
    /// Versions this component on a device (`installed { component }`).
    component: Option<String>,
    /// Deprecated: the old name of `component` (give one of the two).
    product: Option<String>,
    name: Option<String>,
    version: Option<String>,
    #[graphql(name = "type")]
    kind: Option<String>,
    deprecated: Option<bool>,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq, Default)]
#[graphql(name = "PackageOrder")]
pub enum PackageOrderGql {
    /// Newest first.
    #[default]
    CreatedAt,
    /// Highest version first: semantic versions by precedence, then other
    /// version strings, newest first.
    Version,
}

#[derive(InputObject)]
pub struct DeprecatePackageInput {
    id: ID,
    /// False takes the mark back.
    #[graphql(default = true)]
    deprecated: bool,
}

#[derive(InputObject)]
pub struct SetPackageModelsInput {
    id: ID,
    /// The complete new set (ids or model names); at least one.
    models: Vec<ID>,
}

#[derive(InputObject)]
pub struct DeletePackageInput {
    id: ID,
}

#[derive(SimpleObject)]
pub struct PackagePayload {
    /// Null without PACKAGE_READ.
    package: Guarded<Package>,
}

fn payload(ctx: &Context<'_>, p: service::Package) -> PackagePayload {
    PackagePayload { package: Guarded::new(Package::new(app(ctx), p)) }
}

#[derive(Default)]
pub struct PackageQuery;

#[Object]
impl PackageQuery {
    async fn package(&self, ctx: &Context<'_>, id: ID) -> Result<Package> {
        Ok(Package::new(
            app(ctx),
            service::get(app(ctx), caller(ctx), parse_id("id", ResourceKind::Package, &id)?).await?,
        ))
    }

    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn packages(
        &self,
        ctx: &Context<'_>,
        filter: Option<PackageFilter>,
        #[graphql(default)] order_by: PackageOrderGql,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<Package>> {
        let filter = filter.unwrap_or_default();
        let filter = service::PackageFilter {
            model: filter.model.as_ref().map(|m| parse_id("filter.model", ResourceKind::DeviceModel, m)).transpose()?,
            component: one_component("filter", filter.component, filter.product)?.0,
            name: filter.name,
            version: filter.version,
            kind: filter.kind,
            deprecated: filter.deprecated,
        };
        let order = match order_by {
            PackageOrderGql::CreatedAt => service::PackageOrder::CreatedAt,
            PackageOrderGql::Version => service::PackageOrder::Version,
        };
        let page = service::list(app(ctx), caller(ctx), &filter, order, first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), |p| Package::new(app(ctx), p)))
    }

    /// The exact JSON a device receives for this package, signed
    /// (docs/manifests.md tells how to verify it).
    async fn package_manifest(&self, ctx: &Context<'_>, id: ID) -> Result<Json<serde_json::Value>> {
        Ok(Json(service::manifest(app(ctx), caller(ctx), parse_id("id", ResourceKind::Package, &id)?).await?))
    }

    /// The keys that verify manifests, the active one first (also public
    /// at `/.well-known/otadepot/keys`).
    async fn signing_keys(&self, ctx: &Context<'_>) -> Result<Vec<SigningKey>> {
        Ok(service::signing_keys(app(ctx), caller(ctx))?
            .into_iter()
            .map(|k| SigningKey {
                public_key: k.base64(),
                public_key_pem: k.pem(),
                kid: k.kid,
                algorithm: crate::signing::ALGORITHM.to_owned(),
                active: k.active,
            })
            .collect())
    }
}

#[derive(Default)]
pub struct PackageMutation;

#[Object]
impl PackageMutation {
    /// Create a package of uploaded files and/or links (ExoSense's
    /// software package form). The manifest is stored as the `otau_info`
    /// tag of a new, empty content.
    async fn create_software_package(
        &self,
        ctx: &Context<'_>,
        input: CreateSoftwarePackageInput,
    ) -> Result<PackagePayload> {
        let files = input
            .files
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, id)| parse_id(&format!("files[{i}]"), ResourceKind::Content, id))
            .collect::<Result<Vec<_>>>()?;
        let (component, component_field) = one_component("input", input.component, input.product)?;
        let new = service::NewPackage {
            name: input.name,
            version: input.version,
            description: input.description,
            kind: input.kind,
            component,
            component_field,
            models: input.models.into_iter().map(|m| m.0).collect(),
            files,
            links: input.links.unwrap_or_default(),
        };
        Ok(payload(ctx, service::create(app(ctx), caller(ctx), new).await?))
    }

    /// Mark a package deprecated (it stays readable, is not applied any more).
    async fn deprecate_package(&self, ctx: &Context<'_>, input: DeprecatePackageInput) -> Result<PackagePayload> {
        let id = parse_id("id", ResourceKind::Package, &input.id)?;
        Ok(payload(ctx, service::deprecate(app(ctx), caller(ctx), id, input.deprecated).await?))
    }

    /// Replace the compatible device models; the manifest does not change.
    async fn set_package_models(&self, ctx: &Context<'_>, input: SetPackageModelsInput) -> Result<PackagePayload> {
        let id = parse_id("id", ResourceKind::Package, &input.id)?;
        let models = input.models.into_iter().map(|m| m.0).collect();
        Ok(payload(ctx, service::set_models(app(ctx), caller(ctx), id, models).await?))
    }

    /// Delete a package (its holder content becomes DELETED); returns it as
    /// it was.
    async fn delete_package(&self, ctx: &Context<'_>, input: DeletePackageInput) -> Result<PackagePayload> {
        Ok(payload(
            ctx,
            service::delete(app(ctx), caller(ctx), parse_id("id", ResourceKind::Package, &input.id)?).await?,
        ))
    }
}

/// `component`, or its deprecated alias `product`: one of them, or two that
/// agree. Returns the value and the field it came from (for errors).
fn one_component(
    parent: &str,
    component: Option<String>,
    product: Option<String>,
) -> Result<(Option<String>, &'static str)> {
    match (component, product) {
        (Some(c), Some(p)) if c != p => Err(crate::error::Error::invalid(
            format!("{parent}.product"),
            "is the deprecated name of component; give one of the two",
        )
        .into_graphql()),
        (Some(c), _) => Ok((Some(c), "component")),
        (None, Some(p)) => Ok((Some(p), "product")),
        (None, None) => Ok((None, "component")),
    }
}
