//! `device_update`: one device's job in one deployment.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "device_update")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub deployment_id: Uuid,
    pub device_id: Uuid,
    /// Unique across all device updates, int32-safe, given by the database
    /// at insert (migration 000019; never set by the application): the
    /// number protocols such as hawkBit DDI name the update by.
    pub action_id: i32,
    /// See `UpdateState` in the service layer.
    pub state: String,
    /// `incompatible_model` or `already_installed` for SKIPPED.
    pub skip_reason: Option<String>,
    /// 0 to 100.
    pub progress: i32,
    pub error_code: Option<String>,
    pub message: Option<String>,
    /// For a CANCELLED update the device had started: whether it has seen
    /// the cancel.
    pub cancel_acknowledged: bool,
    /// How a hawkBit DDI device was last offered it: `skip` (a held
    /// install), `forced` or `attempt`; none until one fetched it.
    pub ddi_offer: Option<String>,
    pub released_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Read with its update in one statement (`find_also_related`).
    #[sea_orm(
        belongs_to = "super::deployment::Entity",
        from = "Column::DeploymentId",
        to = "super::deployment::Column::Id"
    )]
    Deployment,
}

impl Related<super::deployment::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Deployment.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
