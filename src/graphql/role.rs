//! Roles: `roles`, `createRole`, `updateRole`, `deleteRole`.

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::auth::PermissionGql;
use super::authz::{Guarded, Readable};
use super::{app, caller};
use crate::service::authz::ObjectKind;
use crate::service::role as service;

#[derive(SimpleObject)]
pub struct Role {
    id: ID,
    /// Unique; what tokens name in their roles claim.
    name: String,
    description: String,
    permissions: Vec<PermissionGql>,
    /// Seeded by otadepot; cannot be deleted or emptied.
    built_in: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Readable for Role {
    const KIND: ObjectKind = ObjectKind::Role;
}

impl From<service::Role> for Role {
    fn from(role: service::Role) -> Self {
        Self {
            id: ID(role.id.to_string()),
            name: role.name,
            description: role.description,
            permissions: role.permissions.into_iter().map(Into::into).collect(),
            built_in: role.built_in,
            created_at: role.created_at,
            updated_at: role.updated_at,
        }
    }
}

#[derive(InputObject)]
pub struct CreateRoleInput {
    /// Lowercase letters, digits, `_` or `-`; starts with a letter.
    name: String,
    description: Option<String>,
    permissions: Vec<PermissionGql>,
}

#[derive(InputObject)]
pub struct UpdateRoleInput {
    /// The role to change (names cannot change: tokens refer to them).
    name: String,
    description: Option<String>,
    /// The new, complete set of permissions.
    permissions: Option<Vec<PermissionGql>>,
}

#[derive(InputObject)]
pub struct DeleteRoleInput {
    name: String,
}

#[derive(SimpleObject)]
pub struct RolePayload {
    /// Null without ROLE_READ.
    role: Guarded<Role>,
}

#[derive(Default)]
pub struct RoleQuery;

#[Object]
impl RoleQuery {
    /// Every role, by name.
    async fn roles(&self, ctx: &Context<'_>) -> Result<Vec<Role>> {
        Ok(service::list(app(ctx), caller(ctx)).await?.into_iter().map(Role::from).collect())
    }
}

#[derive(Default)]
pub struct RoleMutation;

#[Object]
impl RoleMutation {
    async fn create_role(&self, ctx: &Context<'_>, input: CreateRoleInput) -> Result<RolePayload> {
        let role = service::create(
            app(ctx),
            caller(ctx),
            service::CreateRole {
                name: input.name,
                description: input.description,
                permissions: input.permissions.into_iter().map(Into::into).collect(),
            },
        )
        .await?;
        Ok(RolePayload { role: Guarded::new(role.into()) })
    }

    async fn update_role(&self, ctx: &Context<'_>, input: UpdateRoleInput) -> Result<RolePayload> {
        let role = service::update(
            app(ctx),
            caller(ctx),
            service::UpdateRole {
                name: input.name,
                description: input.description,
                permissions: input.permissions.map(|p| p.into_iter().map(Into::into).collect()),
            },
        )
        .await?;
        Ok(RolePayload { role: Guarded::new(role.into()) })
    }

    /// Deletes a custom role; returns it as it was.
    async fn delete_role(&self, ctx: &Context<'_>, input: DeleteRoleInput) -> Result<RolePayload> {
        let role = service::delete(app(ctx), caller(ctx), &input.name).await?;
        Ok(RolePayload { role: Guarded::new(role.into()) })
    }
}
