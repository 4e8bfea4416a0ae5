//! `content`: one stored object (a file, or a manifest holder of length 0).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "content")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Metadata only; never part of an object key or a filesystem path.
    pub name: String,
    pub content_type: String,
    /// firmware, application, config, script, manifest, ...
    #[sea_orm(column_name = "type")]
    pub kind: String,
    pub length: i64,
    /// What the uploader promised (hex), checked when the bytes arrive.
    pub declared_sha256: Option<String>,
    /// What arrived (hex), computed while streaming.
    pub sha256: Option<String>,
    pub md5: Option<String>,
    /// SHA-1 (hex), for hawkBit DDI clients; null on content stored before
    /// migration 000018 until the `content.sha1_backfill` job reads it.
    pub sha1: Option<String>,
    pub product_id: Option<String>,
    /// See `ContentState` in the service layer.
    pub state: String,
    pub staging_key: Option<String>,
    pub repository_key: Option<String>,
    /// CLEAN, INFECTED, ERROR or SKIPPED.
    pub scan_verdict: Option<String>,
    pub scan_signature: Option<String>,
    pub scan_error: Option<String>,
    pub scanned_at: Option<DateTimeUtc>,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::content_tag::Entity")]
    Tags,
}

impl Related<super::content_tag::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Tags.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
