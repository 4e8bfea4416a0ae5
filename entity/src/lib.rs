//! sea-orm entities, one module per table, and no logic: the rules live in
//! the `otadepot` crate's `service/` modules.

pub mod audit_event;
pub mod content;
pub mod content_tag;
pub mod job;
pub mod role;
