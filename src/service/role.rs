//! Roles: named sets of permissions, and resolving a token's roles.
//!
//! Built-in roles (DESIGN.md §7) are seeded by migration. None can be
//! deleted or emptied; `admin` holds every permission and cannot change.
//!
//! ROLE_ADMIN is not a way to more power: an operator may grant (to a new
//! role, or add to an existing one) only permissions it holds itself, may
//! not change or delete a role it holds unless it also holds `admin`, and
//! `*` means every permission for the built-in `admin` role alone. A refusal
//! is FORBIDDEN and leaves an audit event (`role.create_denied`,
//! `role.update_denied`, `role.delete_denied`) in a transaction that writes
//! nothing else. The rule not to break: every path that gives a role
//! permissions goes through [`refusal`] before it writes.

use std::collections::BTreeSet;

use chrono::Utc;
use entity::role::{self, Column};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use uuid::Uuid;

use crate::app::App;
use crate::auth::jwt::Claims;
use crate::auth::permission;
use crate::auth::{Actor, Ctx, Permission, User};
use crate::error::{Error, ResourceKind, Result};
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

/// What a stored role grants; `*` only counts for the built-in `admin`.
fn permissions_of(model: &role::Model) -> BTreeSet<Permission> {
    permission::expand(&model.permissions, model.built_in && model.name == ADMIN)
}

impl From<role::Model> for Role {
    fn from(model: role::Model) -> Self {
        Self {
            id: model.id,
            permissions: permissions_of(&model),
            name: model.name,
            description: model.description,
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
            permissions.extend(permissions_of(&row));
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
    if let Some(refused) = refusal(ctx, &input.name, &permissions) {
        return Err(refuse(tx, ctx, "role.create_denied", &input.name, refused, Some(&permissions)).await);
    }
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
        ResourceKind::Role,
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
    let existing =
        find_by_name(tx.conn(), &input.name).await?.ok_or_else(|| Error::not_found(ResourceKind::Role, &input.name))?;
    if existing.built_in && existing.name == ADMIN {
        return Err(Error::InvalidState("the admin role always holds every permission and cannot be changed".into()));
    }
    if let Some(permissions) = &permissions
        && permissions.is_empty()
        && existing.built_in
    {
        return Err(Error::invalid("permissions", "a built-in role cannot be emptied"));
    }
    let before = permissions_of(&existing);
    let added = permissions.as_ref().map(|p| p.difference(&before).copied().collect()).unwrap_or_default();
    if let Some(refused) = refusal(ctx, &existing.name, &added) {
        return Err(refuse(tx, ctx, "role.update_denied", &input.name, refused, permissions.as_ref()).await);
    }
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
    tx.audit(ctx, "role.update", ResourceKind::Role, &model.name, changes.into()).await?;
    tx.commit().await?;
    Ok(model.into())
}

pub async fn delete(app: &App, ctx: &Ctx, name: &str) -> Result<Role> {
    ctx.require(Permission::RoleAdmin)?;
    let mut tx = WriteTx::begin(app).await?;
    let existing = find_by_name(tx.conn(), name).await?.ok_or_else(|| Error::not_found(ResourceKind::Role, name))?;
    if existing.built_in {
        return Err(Error::InvalidState(format!("{name:?} is a built-in role and cannot be deleted")));
    }
    if let Some(refused) = refusal(ctx, name, &BTreeSet::new()) {
        return Err(refuse(tx, ctx, "role.delete_denied", name, refused, None).await);
    }
    role::Entity::delete_by_id(existing.id).exec(tx.conn()).await?;
    tx.audit(ctx, "role.delete", ResourceKind::Role, name, serde_json::json!({ "id": existing.id })).await?;
    tx.commit().await?;
    Ok(existing.into())
}

/// Why the caller may not give role `role` the permissions `added` (or
/// change it at all), if it may not.
struct Refusal {
    /// What the caller lacks, as the FORBIDDEN error names it.
    lacks: &'static str,
    reason: &'static str,
    not_held: Vec<&'static str>,
}

fn refusal(ctx: &Ctx, role: &str, added: &BTreeSet<Permission>) -> Option<Refusal> {
    let Actor::User(user) = &ctx.actor else {
        // The system (the CLI, jobs) acts with the server's own authority;
        // anyone else was refused by `ctx.require` already.
        return None;
    };
    let not_held: Vec<&'static str> = added.difference(&user.permissions).map(|p| p.as_str()).collect();
    let is_admin = user.roles.iter().any(|r| r == ADMIN);
    if !is_admin && user.roles.iter().any(|r| r == role) {
        return Some(Refusal {
            lacks: "the admin role (to change a role the caller holds)",
            reason: "the caller holds this role",
            not_held,
        });
    }
    let first = *not_held.first()?;
    Some(Refusal { lacks: first, reason: "the caller does not hold every permission it grants", not_held })
}

/// Record a refused attempt (in `tx`, which has written nothing) and
/// return the FORBIDDEN error for it.
async fn refuse(
    mut tx: WriteTx,
    ctx: &Ctx,
    action: &str,
    role: &str,
    refused: Refusal,
    requested: Option<&BTreeSet<Permission>>,
) -> Error {
    let mut details = serde_json::json!({ "reason": refused.reason, "not_held": refused.not_held });
    if let Some(requested) = requested {
        details["permissions"] = serde_json::json!(names(requested));
    }
    let recorded = async {
        tx.audit(ctx, action, ResourceKind::Role, role, details).await?;
        tx.commit().await
    };
    match recorded.await {
        Ok(()) => Error::Forbidden { permission: refused.lacks },
        Err(err) => err,
    }
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

/// Verify an operator's bearer token and resolve its roles to permissions.
pub async fn authenticate_operator(app: &App, token: &str) -> Result<User> {
    let claims = app.jwt.verify(token)?;
    resolve_user(&app.db, claims).await
}

/// Like [`authenticate_operator`], also saying when the token expires (a
/// GraphQL WebSocket closes then).
pub async fn authenticate_operator_until(app: &App, token: &str) -> Result<(User, chrono::DateTime<Utc>)> {
    let claims = app.jwt.verify(token)?;
    let expires_at = chrono::DateTime::from_timestamp(claims.expires_at, 0).unwrap_or(chrono::DateTime::UNIX_EPOCH);
    Ok((resolve_user(&app.db, claims).await?, expires_at))
}
