//! `/healthz` (the process is alive) and `/readyz` (what it depends on).

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::HttpState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Every dependency reported; 503 only when the database is unreachable
/// (stores and clamd can be down while reads still work).
pub async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let app = &state.app;
    let (database, staging, repository, clamd) = tokio::join!(
        timed(async { crate::db::ping(&app.db).await.map(|()| None).map_err(anyhow::Error::from) }),
        timed(async { crate::storage::check(app.stores.staging.as_ref()).await.map(|()| None) }),
        timed(async { crate::storage::check(app.stores.repository.as_ref()).await.map(|()| None) }),
        async {
            match &app.clamd {
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
    (
        code,
        Json(json!({
            "status": status,
            "checks": { "database": database, "staging": staging, "repository": repository, "clamd": clamd },
        })),
    )
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
