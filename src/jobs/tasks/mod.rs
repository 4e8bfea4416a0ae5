//! One file per job kind. A task decodes its payload and calls a service
//! function; the rule lives in the service, which only enqueues.

pub mod command_expire;
pub mod content_release_abandoned_uploads;
pub mod content_scan;
pub mod content_sha1_backfill;
pub mod deployment_reconcile;
