//! `package`: the typed index of a software package. The manifest is the
//! `otau_info` tag of the holder content (`content_id`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "package")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The holder content whose `otau_info` tag is the manifest.
    pub content_id: Uuid,
    /// The component the package versions on a device (`otau_info.product`).
    pub component: String,
    pub name: String,
    pub version: String,
    /// Sorts versions: semantic versions by precedence, others by creation.
    pub version_key: String,
    /// The manifest type (URL_LIST, ...).
    #[sea_orm(column_name = "type")]
    pub kind: String,
    pub description: String,
    pub deprecated: bool,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub deleted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
