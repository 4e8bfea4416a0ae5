//! `audit_event`: the append-only, hash-chained audit trail.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_event")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Position in the chain: 1, 2, 3, ... without gaps.
    #[sea_orm(unique)]
    pub seq: i64,
    pub at: DateTimeUtc,
    /// `user`, `device` or `system`.
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub object_kind: String,
    pub object_id: String,
    pub details: Json,
    pub request_id: Option<String>,
    /// Hex SHA-256 of the previous event (64 zeros for the first one).
    pub prev_hash: String,
    /// Hex SHA-256 of this event's canonical form, `prev_hash` included.
    pub hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
