//! `enrollment_token`: lets devices enroll themselves as PENDING.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "enrollment_token")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    /// When set, only devices of this model may enroll with it.
    pub model_id: Option<Uuid>,
    /// SHA-256 (hex) of the token; the token itself is never stored.
    pub token_hash: String,
    pub expires_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    /// Most enrollments the token answers (none: no quota).
    pub max_devices: Option<i32>,
    /// Enrollments answered so far (counted against `max_devices`).
    pub enrolled_count: i32,
    pub created_by: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
