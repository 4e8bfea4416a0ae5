//! One file per job kind. A task decodes its payload and calls a service
//! function; the rule lives in the service, which only enqueues.

pub mod deployment_reconcile;
