//! `device`: one device of the fleet.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "device")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The device's own id (EPN, assetId, controllerId); unique.
    pub endpoint_id: String,
    pub serial: Option<String>,
    pub model_id: Uuid,
    /// See `DeviceStatus` in the service layer.
    pub status: String,
    /// SHA-256 (hex) of the device secret; the secret itself is never stored.
    pub credential_hash: String,
    pub credential_rotated_at: DateTimeUtc,
    /// The gateway that may act for this device.
    pub gateway_id: Option<Uuid>,
    pub last_seen_at: Option<DateTimeUtc>,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
