//! `me`: who the caller is to otadepot.

use async_graphql::{Context, Enum, Object, Result, SimpleObject};

use super::caller;

/// An operator permission; roles grant sets of these.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "Permission", remote = "crate::auth::Permission", rename_items = "SCREAMING_SNAKE_CASE")]
pub enum PermissionGql {
    ContentRead,
    ContentWrite,
    ContentPromote,
    PackageRead,
    PackageWrite,
    DeviceRead,
    DeviceWrite,
    GroupWrite,
    DeploymentRead,
    DeploymentWrite,
    CommandRead,
    CommandSend,
    AuditRead,
    RoleRead,
    RoleAdmin,
}

#[derive(SimpleObject)]
pub struct Me {
    /// The token's `sub`.
    subject: String,
    /// Role names the token carries (unknown ones grant nothing).
    roles: Vec<String>,
    /// What those roles allow, together.
    permissions: Vec<PermissionGql>,
}

#[derive(Default)]
pub struct AuthQuery;

#[Object]
impl AuthQuery {
    /// The calling operator.
    async fn me(&self, ctx: &Context<'_>) -> Result<Me> {
        let user = caller(ctx).require_user()?;
        Ok(Me {
            subject: user.subject.clone(),
            roles: user.roles.clone(),
            permissions: user.permissions.iter().map(|p| (*p).into()).collect(),
        })
    }
}
