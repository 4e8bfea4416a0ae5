//! `deployment`: a package applied to a group or a device list.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deployment")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub package_id: Uuid,
    pub group_id: Option<Uuid>,
    /// STANDARD, DOWNLOAD_ONLY or COORDINATED.
    pub mode: String,
    /// See `DeploymentState` in the service layer.
    pub state: String,
    pub max_in_flight: Option<i32>,
    /// JSON array of cumulative percentages, the last one 100.
    pub phases: String,
    /// Index into `phases`.
    pub current_phase: i32,
    pub failure_threshold_percent: Option<i32>,
    pub start_at: Option<DateTimeUtc>,
    pub expires_at: Option<DateTimeUtc>,
    /// COORDINATED: release the install once this share of the targets
    /// has downloaded (null: every target).
    pub install_quorum_percent: Option<i32>,
    /// FORCED or SOFT: the hawkBit DDI action type devices are told.
    pub action_type: String,
    /// The maintenance window (JSON), none: installs any time.
    #[sea_orm(column_type = "Text", nullable)]
    pub maintenance_window: Option<String>,
    /// Whether devices may install (always in STANDARD mode).
    pub install_released: bool,
    /// Why it ended the way it did (ABORTED, expired, cancelled).
    pub reason: Option<String>,
    /// The queued reconcile job, woken by device reports.
    pub reconcile_job_id: Option<Uuid>,
    pub target_count: i32,
    pub skipped_count: i32,
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
