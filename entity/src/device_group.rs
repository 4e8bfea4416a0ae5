//! `device_group`: devices of one model, static (listed) or dynamic (a filter).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "device_group")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Unique.
    pub name: String,
    pub description: String,
    pub model_id: Uuid,
    /// STATIC or DYNAMIC.
    pub kind: String,
    /// A dynamic group's filter (JSON), see `service::group`.
    pub filter: Option<String>,
    /// The group's current package: a deployment that devices joining the
    /// group are added to.
    pub auto_deployment_id: Option<Uuid>,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
