//! Roles: named sets of permissions, and resolving a token's roles.
//!
//! Built-in roles (DESIGN.md §7) are seeded by migration. None can be
//! deleted or emptied; `admin` holds every permission and cannot change.

use std::collections::BTreeSet;

use chrono::Utc;
use entity::role::{self, Column};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use uuid::Uuid;

use crate::app::App;
use crate::auth::jwt::Claims;
use crate::auth::permission;
use crate::auth::{Ctx, Permission, User};
use crate::error::{Error, Result};
use crate::service::WriteTx;

pub const ADMIN: &str = "admin";

/// A role as the domain sees it.
#[derive(Clone, Debug)]
pub struct Role {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub permissions: BTreeSet<Permission>,
    pub built_in: bool,
    pub created_at: chrono::DateTime<Utc>,
    pub updated_at: chrono::DateTime<Utc>,
}

impl From<role::Model> for Role {
    fn from(model: role::Model) -> Self {
        Self {
            id: model.id,
            name: model.name,
            description: model.description,
            permissions: permission::expand(&model.permissions),
            built_in: model.built_in,
            created_at: model.created_at,
            updated_at: model.updated_at,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CreateRole {
    pub name: String,
    pub description: Option<String>,
    pub permissions: Vec<Permission>,
}

#[derive(Clone, Debug)]
pub struct UpdateRole {
    pub name: String,
    pub description: Option<String>,
    pub permissions: Option<Vec<Permission>>,
}

/// Turn verified token claims into an operator with the union of the
/// permissions of their known roles. Unknown role names grant nothing.
pub async fn resolve_user(db: &impl ConnectionTrait, claims: Claims) -> Result<User> {
    let mut permissions = BTreeSet::new();
    if !claims.roles.is_empty() {
        let rows =
            role::Entity::find().filter(Column::Name.is_in(claims.roles.iter().map(String::as_str))).all(db).await?;
        for row in rows {
            permissions.extend(permission::expand(&row.permissions));
        }
    }
    Ok(User { subject: claims.subject, roles: claims.roles, permissions })
}

pub async fn list(app: &App, ctx: &Ctx) -> Result<Vec<Role>> {
    ctx.require(Permission::RoleRead)?;
    let rows = role::Entity::find().order_by_asc(Column::Name).all(&app.db).await?;
    Ok(rows.into_iter().map(Role::from).collect())
}

/// Whether role names exist (for `otadepot token issue`).
pub async fn unknown_names(db: &impl ConnectionTrait, names: &[String]) -> Result<Vec<String>> {
    let known: BTreeSet<String> = role::Entity::find()
        .filter(Column::Name.is_in(names.iter().map(String::as_str)))
        .all(db)
        .await?
        .into_iter()
        .map(|r| r.name)
        .collect();
    Ok(names.iter().filter(|n| !known.contains(*n)).cloned().collect())
}

pub async fn create(app: &App, ctx: &Ctx, input: CreateRole) -> Result<Role> {
    ctx.require(Permission::RoleAdmin)?;
    validate_name(&input.name)?;
    let description = validate_description(input.description.unwrap_or_default())?;
    let permissions = normalize(input.permissions);
    if permissions.is_empty() {
        return Err(Error::invalid("permissions", "a role needs at least one permission"));
    }

    let mut tx = WriteTx::begin(app).await?;
    if find_by_name(tx.conn(), &input.name).await?.is_some() {
        return Err(Error::Conflict(format!("role {:?} already exists", input.name)));
    }
    let now = Utc::now();
    let model = role::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(input.name.clone()),
        description: Set(description),
        permissions: Set(stored(&permissions)),
        built_in: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(tx.conn())
    .await?;
    tx.audit(
        ctx,
        "role.create",
        "role",
        &model.name,
        serde_json::json!({ "id": model.id, "permissions": names(&permissions) }),
    )
    .await?;
    tx.commit().await?;
    Ok(model.into())
}

pub async fn update(app: &App, ctx: &Ctx, input: UpdateRole) -> Result<Role> {
    ctx.require(Permission::RoleAdmin)?;
    let description = input.description.map(validate_description).transpose()?;
    let permissions = input.permissions.map(normalize);

    let mut tx = WriteTx::begin(app).await?;
    let existing = find_by_name(tx.conn(), &input.name).await?.ok_or_else(|| Error::not_found("role", &input.name))?;
    if existing.built_in && existing.name == ADMIN {
        return Err(Error::InvalidState("the admin role always holds every permission and cannot be changed".into()));
    }
    if let Some(permissions) = &permissions
        && permissions.is_empty()
        && existing.built_in
    {
        return Err(Error::invalid("permissions", "a built-in role cannot be emptied"));
    }
    let before = permission::expand(&existing.permissions);
    let mut active: role::ActiveModel = existing.into();
    let mut changes = serde_json::Map::new();
    if let Some(description) = description {
        changes.insert("description".into(), description.clone().into());
        active.description = Set(description);
    }
    if let Some(permissions) = &permissions {
        changes.insert("permissions_before".into(), serde_json::json!(names(&before)));
        changes.insert("permissions".into(), serde_json::json!(names(permissions)));
        active.permissions = Set(stored(permissions));
    }
    active.updated_at = Set(Utc::now());
    let model = active.update(tx.conn()).await?;
    tx.audit(ctx, "role.update", "role", &model.name, changes.into()).await?;
    tx.commit().await?;
    Ok(model.into())
}

pub async fn delete(app: &App, ctx: &Ctx, name: &str) -> Result<Role> {
    ctx.require(Permission::RoleAdmin)?;
    let mut tx = WriteTx::begin(app).await?;
    let existing = find_by_name(tx.conn(), name).await?.ok_or_else(|| Error::not_found("role", name))?;
    if existing.built_in {
        return Err(Error::InvalidState(format!("{name:?} is a built-in role and cannot be deleted")));
    }
    role::Entity::delete_by_id(existing.id).exec(tx.conn()).await?;
    tx.audit(ctx, "role.delete", "role", name, serde_json::json!({ "id": existing.id })).await?;
    tx.commit().await?;
    Ok(existing.into())
}

async fn find_by_name(db: &impl ConnectionTrait, name: &str) -> Result<Option<role::Model>> {
    Ok(role::Entity::find().filter(Column::Name.eq(name)).one(db).await?)
}

fn validate_name(name: &str) -> Result<()> {
    let ok = (2..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("name", "2 to 64 characters: lowercase letters, digits, '_' or '-', starting with a letter"))
    }
}

fn validate_description(description: String) -> Result<String> {
    if description.chars().count() > 500 {
        return Err(Error::invalid("description", "at most 500 characters"));
    }
    Ok(description)
}

fn normalize(permissions: Vec<Permission>) -> BTreeSet<Permission> {
    permissions.into_iter().collect()
}

fn names(permissions: &BTreeSet<Permission>) -> Vec<&'static str> {
    permissions.iter().map(|p| p.as_str()).collect()
}

fn stored(permissions: &BTreeSet<Permission>) -> serde_json::Value {
    // Custom roles store explicit names, never ALL_PERMISSIONS ("*"): only
    // `admin` silently gains permissions added in later versions.
    serde_json::json!(names(permissions))
}
