//! `command`: a remote command to one device (DESIGN.md §4).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "command")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Shared by the commands of one `sendCommand`.
    pub batch_id: Uuid,
    pub device_id: Uuid,
    /// REBOOT, RESTART_AGENT or a configured custom name.
    pub name: String,
    /// JSON.
    pub args: String,
    /// See `CommandState` in the service layer.
    pub state: String,
    /// JSON the device reported with its result.
    pub result: Option<String>,
    pub message: Option<String>,
    pub expires_at: DateTimeUtc,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// First handed to the device in a poll.
    pub delivered_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
