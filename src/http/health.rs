//! `/healthz` (the process is alive) and `/readyz` (what it depends on).
//!
//! Rule: `/readyz` tells an anonymous probe its status alone (the HTTP
//! code and `{"status"}`); the checks, with versions, latencies and error
//! texts (paths, hosts, database messages), go only to a caller with a
//! valid operator token, whatever its roles (checked without the
//! database, so the details are there when the database is not).
//! clamd's details say what it has loaded (`crate::scan::ClamdInfo`):
//! engine, official database version, signature count, and the
//! `test_signatures_only` warning.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::HttpState;
use super::extract::Authorization;
use crate::error::Error;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Every dependency reported; 503 only when the database is unreachable
/// (stores and clamd can be down while reads still work). The details only
/// with an operator token; a token that does not verify is a 401.
pub async fn readyz(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let app = &state.app;
    let operator = match super::extract::authorization(&headers) {
        Authorization::Missing => false,
        Authorization::Bearer(token) => {
            // The token's signature and claims only: its roles live in the
            // database, which may be what is down.
            if let Err(err) = app.jwt.verify(token) {
                return err.into_response();
            }
            true
        }
        Authorization::Malformed => {
            return Error::Unauthenticated("Authorization must be \"Bearer <token>\"".into()).into_response();
        }
    };
    let (database, staging, repository, clamd) = tokio::join!(
        timed(async { crate::db::ping(&app.db).await.map(|()| None).map_err(anyhow::Error::from) }),
        timed(async { crate::storage::check(app.stores.staging.as_ref()).await.map(|()| None) }),
        timed(async { crate::storage::check(app.stores.repository.as_ref()).await.map(|()| None) }),
        async {
            match &app.clamd {
                Some(clamd) if operator => clamd_details(clamd).await,
                Some(clamd) => timed(async { clamd.version(CHECK_TIMEOUT).await.map(Some) }).await,
                None => {
                    json!({ "ok": false, "disabled": true, "error": "scanner disabled by configuration" })
                }
            }
        },
    );
    let database_ok = database["ok"] == Value::Bool(true);
    let all_ok = [&database, &staging, &repository, &clamd].iter().all(|c| c["ok"] == Value::Bool(true));
    let status = if !database_ok {
        "unavailable"
    } else if all_ok {
        "ready"
    } else {
        "degraded"
    };
    let code = if database_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if !operator {
        return (code, Json(json!({ "status": status }))).into_response();
    }
    (
        code,
        Json(json!({
            "status": status,
            "checks": { "database": database, "staging": staging, "repository": repository, "clamd": clamd },
        })),
    )
        .into_response()
}

/// The clamd check with what clamd has loaded.
async fn clamd_details(clamd: &crate::scan::Clamd) -> Value {
    let started = Instant::now();
    let result = clamd.info(CHECK_TIMEOUT).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let info = match result {
        Ok(info) => info,
        Err(err) => return json!({ "ok": false, "latency_ms": latency_ms, "error": format!("{err:#}") }),
    };
    let mut value = json!({
        "ok": true,
        "latency_ms": latency_ms,
        "version": info.version,
        "engine": info.engine,
        "database_version": info.database.as_ref().map(|d| d.version),
        "database_date": info.database.as_ref().map(|d| d.date.clone()),
        "signatures": info.signatures.as_ref().ok(),
        "test_signatures_only": info.test_signatures_only(),
    });
    if let Err(reason) = &info.signatures {
        value["signatures_error"] = reason.clone().into();
    }
    if info.test_signatures_only() {
        value["warning"] = format!(
            "{}: clamd names no official ClamAV database (main, daily), only local signature files such as otadepot's bundled test signatures: real malware will not be detected",
            crate::scan::TEST_SIGNATURES_ONLY
        )
        .into();
    }
    value
}

async fn timed(check: impl Future<Output = anyhow::Result<Option<String>>>) -> Value {
    let started = Instant::now();
    let result = tokio::time::timeout(CHECK_TIMEOUT, check).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(Ok(detail)) => {
            let mut value = json!({ "ok": true, "latency_ms": latency_ms });
            if let Some(detail) = detail {
                value["version"] = detail.into();
            }
            value
        }
        Ok(Err(err)) => {
            json!({ "ok": false, "latency_ms": latency_ms, "error": format!("{err:#}") })
        }
        Err(_) => json!({ "ok": false, "latency_ms": latency_ms, "error": "timed out" }),
    }
}
