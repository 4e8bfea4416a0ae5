//! sea-orm entities, one module per table, and no logic: the rules live in
//! the `otadepot` crate's `service/` modules.

pub mod audit_event;
pub mod command;
pub mod content;
pub mod content_tag;
pub mod deployment;
pub mod device;
pub mod device_attribute;
pub mod device_group;
pub mod device_group_member;
pub mod device_installed;
pub mod device_model;
pub mod device_reported_attribute;
pub mod device_update;
pub mod enrollment_token;
pub mod installation;
pub mod job;
pub mod package;
pub mod package_file;
pub mod package_model;
pub mod role;
