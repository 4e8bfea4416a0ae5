//! Database migrations, the same on SQLite and PostgreSQL.
//!
//! One migration per change, in time order; a migration that has landed on
//! main is never edited again, a later one changes what it made.

// sea-orm-migration's async_trait signature spells `&SchemaManager` without its lifetime.
#![allow(elided_lifetimes_in_paths)]

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_role;
mod m20261122_000002_create_audit_event;
mod m20261122_000003_create_job;
mod m20261122_000004_create_content;
mod m20261130_000005_create_device_model;
mod m20261130_000006_create_package;
mod m20261130_000007_create_device;
mod m20261130_000008_create_device_group;
mod m20261130_000009_create_enrollment_token;
mod m20261130_000010_create_deployment;
mod m20261130_000011_add_group_auto_deployment;
mod m20261130_000012_add_deployment_install_quorum;
mod m20261130_000013_create_command;
mod m20261202_000014_add_enrollment_token_quota;
mod m20261202_000015_create_device_reported_attribute;
mod m20261202_000016_rename_command_expire_job;
mod m20261203_000017_rename_package_product_to_component;
mod m20261203_000018_add_content_sha1;
mod m20261203_000019_add_device_update_action_id;
mod m20261203_000020_add_deployment_action_type;
mod m20261204_000021_add_deployment_maintenance_window;
mod m20261204_000022_add_device_update_ddi_offer;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_role::Migration),
            Box::new(m20261122_000002_create_audit_event::Migration),
            Box::new(m20261122_000003_create_job::Migration),
            Box::new(m20261122_000004_create_content::Migration),
            Box::new(m20261130_000005_create_device_model::Migration),
            Box::new(m20261130_000006_create_package::Migration),
            Box::new(m20261130_000007_create_device::Migration),
            Box::new(m20261130_000008_create_device_group::Migration),
            Box::new(m20261130_000009_create_enrollment_token::Migration),
            Box::new(m20261130_000010_create_deployment::Migration),
            Box::new(m20261130_000011_add_group_auto_deployment::Migration),
            Box::new(m20261130_000012_add_deployment_install_quorum::Migration),
            Box::new(m20261130_000013_create_command::Migration),
            Box::new(m20261202_000014_add_enrollment_token_quota::Migration),
            Box::new(m20261202_000015_create_device_reported_attribute::Migration),
            Box::new(m20261202_000016_rename_command_expire_job::Migration),
            Box::new(m20261203_000017_rename_package_product_to_component::Migration),
            Box::new(m20261203_000018_add_content_sha1::Migration),
            Box::new(m20261203_000019_add_device_update_action_id::Migration),
            Box::new(m20261203_000020_add_deployment_action_type::Migration),
            Box::new(m20261204_000021_add_deployment_maintenance_window::Migration),
            Box::new(m20261204_000022_add_device_update_ddi_offer::Migration),
        ]
    }
}
