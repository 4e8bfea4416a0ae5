//! sea-orm entities, one module per table, and no logic: the rules live in
//! the `otadepot` crate's `service/` modules.

pub mod audit_event;
pub mod job;
pub mod role;
