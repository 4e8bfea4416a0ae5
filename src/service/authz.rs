//! What reading each kind of object needs, wherever it appears.
//!
//! A root query checks its own permission (`ctx.require(..)` in its service
//! function), but the same object also turns up inside others: a command's
//! device, a deployment's device updates, the package a mutation returns.
//! The read permission belongs to the kind of object, not to the way in:
//! reading a device anywhere needs DEVICE_READ. [`ObjectKind::read_permission`]
//! is the one table of it, and [`require_read`] the one check that every
//! field returning an object of another area calls (through
//! `graphql::authz::Guarded`).
//!
//! The rule not to break: a kind's read permission here is the permission
//! its root queries require (`tests/it/authz_coverage.rs` checks both).

use crate::auth::{Ctx, Permission};
use crate::error::Result;

/// The kinds of object operators read, each guarded by one read permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Content,
    Package,
    Device,
    DeviceModel,
    DeviceGroup,
    EnrollmentToken,
    Deployment,
    DeviceUpdate,
    Command,
    CommandBatch,
    AuditEvent,
    Role,
}

impl ObjectKind {
    /// The permission that reading an object of this kind needs.
    pub fn read_permission(self) -> Permission {
        match self {
            Self::Content => Permission::ContentRead,
            Self::Package => Permission::PackageRead,
            // Models, groups and enrollment tokens are read with the devices
            // (their root queries require DEVICE_READ).
            Self::Device | Self::DeviceModel | Self::DeviceGroup | Self::EnrollmentToken => Permission::DeviceRead,
            Self::Deployment | Self::DeviceUpdate => Permission::DeploymentRead,
            Self::Command | Self::CommandBatch => Permission::CommandRead,
            Self::AuditEvent => Permission::AuditRead,
            Self::Role => Permission::RoleRead,
        }
    }
}

/// UNAUTHENTICATED without an operator, FORBIDDEN unless the caller may
/// read objects of `kind`.
pub fn require_read(ctx: &Ctx, kind: ObjectKind) -> Result<()> {
    ctx.require(kind.read_permission()).map(|_| ())
}
