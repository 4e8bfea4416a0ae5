//! Who is calling, and what they may do.
//!
//! Every request gets a [`Ctx`]: the [`Actor`] (anonymous, an operator with
//! the permissions of their roles, a device, or the system itself) and the
//! request id. Services authorize with one call shape, as the first thing
//! they do: `ctx.require(Permission::RoleAdmin)?`. Resolvers and routes
//! never check permissions themselves.

pub mod jwt;
pub mod permission;
pub mod secret;
pub mod signed_url;

use std::collections::BTreeSet;

pub use permission::Permission;

use crate::error::{Error, Result};

/// An authenticated operator.
#[derive(Clone, Debug)]
pub struct User {
    pub subject: String,
    /// Role names as the token carried them (known or not).
    pub roles: Vec<String>,
    /// Union of the permissions of the known roles.
    pub permissions: BTreeSet<Permission>,
}

/// An authenticated device (by its own secret, or through its gateway).
#[derive(Clone, Debug)]
pub struct DeviceActor {
    pub id: uuid::Uuid,
    pub endpoint_id: String,
    pub model_id: uuid::Uuid,
    /// False while the device awaits an operator's approval.
    pub approved: bool,
    /// The gateway whose credential acts for this device, if one does.
    pub via_gateway: Option<uuid::Uuid>,
}

#[derive(Clone, Debug)]
pub enum Actor {
    Anonymous,
    User(User),
    Device(DeviceActor),
    /// Background work and the CLI acting with the server's own authority.
    System(String),
}

impl Actor {
    /// `(kind, id)` as written into audit events.
    pub fn audit_identity(&self) -> (&'static str, String) {
        match self {
            Actor::Anonymous => ("anonymous", String::new()),
            Actor::User(user) => ("user", user.subject.clone()),
            Actor::Device(device) => ("device", device.id.to_string()),
            Actor::System(name) => ("system", name.clone()),
        }
    }
}

/// The request context every service function takes first.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub actor: Actor,
    pub request_id: Option<String>,
}

impl Ctx {
    pub fn new(actor: Actor, request_id: Option<String>) -> Self {
        Self { actor, request_id }
    }

    pub fn system(name: &str) -> Self {
        Self::new(Actor::System(name.to_owned()), None)
    }

    /// UNAUTHENTICATED without an operator, FORBIDDEN without `permission`.
    pub fn require(&self, permission: Permission) -> Result<&Actor> {
        match &self.actor {
            Actor::Anonymous => Err(Error::Unauthenticated("an operator token is required".into())),
            Actor::User(user) if user.permissions.contains(&permission) => Ok(&self.actor),
            Actor::User(_) => Err(Error::Forbidden { permission: permission.as_str() }),
            Actor::System(_) => Ok(&self.actor),
            // Device credentials work only on device endpoints.
            Actor::Device(_) => Err(Error::Unauthenticated("an operator token is required".into())),
        }
    }

    /// The calling device, approved (a PENDING device is FORBIDDEN);
    /// anyone else is UNAUTHENTICATED.
    pub fn require_device(&self) -> Result<&DeviceActor> {
        match &self.actor {
            Actor::Device(device) if device.approved => Ok(device),
            Actor::Device(_) => Err(Error::Forbidden { permission: "an operator's approval of this device" }),
            _ => Err(Error::Unauthenticated("a device credential is required".into())),
        }
    }

    /// Any authenticated operator (for `me`).
    pub fn require_user(&self) -> Result<&User> {
        match &self.actor {
            Actor::User(user) => Ok(user),
            _ => Err(Error::Unauthenticated("an operator token is required".into())),
        }
    }
}
