//! otadepot: an over-the-air update server for IoT device fleets.
//!
//! Layers (DESIGN.md §3): `graphql/` and `http/` parse input and call one
//! `service/` function; `service/` authorizes, validates and writes with
//! its audit event in one transaction; `entity/` and `migration/` hold the
//! tables. See docs/architecture.md.

pub mod app;
pub mod auth;
pub mod canonical_json;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod graphql;
pub mod http;
pub mod jobs;
pub mod scan;
pub mod server;
pub mod service;
pub mod signing;
pub mod storage;
pub mod telemetry;
