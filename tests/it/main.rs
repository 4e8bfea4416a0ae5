//! Integration tests: the real server on port 0, a fresh database per test
//! (SQLite by default, PostgreSQL with `OTADEPOT_TEST_DB=postgres`), the
//! real clamd when `scripts/test` started one, driven over HTTP.

// A panic is how a test fails.
#![allow(clippy::unwrap_used)]

mod audit;
mod auth;
mod authz_coverage;
mod cli;
mod commands;
mod content;
mod ddi;
mod ddi_swupdate;
mod deployments;
mod device_api;
mod device_limits;
mod device_models;
mod devices;
mod downloads;
mod graphql_http;
mod graphql_limits;
mod graphql_ws;
mod hardening;
mod health;
mod http_routes;
mod jobs;
mod layers;
mod packages;
mod readme;
mod repository;
mod roles;
mod scan;
mod scanner;
mod schema;
mod support;
mod tus;
mod upload_content;
mod upload_form;
