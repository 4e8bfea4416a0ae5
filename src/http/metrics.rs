//! `/metrics` in the Prometheus text format, and the per-request counters.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use entity::job;
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{DatabaseConnection, DbBackend, EntityTrait, QuerySelect};

use super::HttpState;

/// Count and time one request (see `layers::MetricsLayer`).
pub(super) fn record(
    route: metrics::SharedString,
    method: &'static str,
    status: axum::http::StatusCode,
    took: std::time::Duration,
    statements: u32,
) {
    let labels = [
        metrics::Label::new("route", route),
        metrics::Label::from_static_parts("method", method),
        match static_status(status.as_u16()) {
            Some(status) => metrics::Label::from_static_parts("status", status),
            None => metrics::Label::new("status", status.as_u16().to_string()),
        },
    ];
    metrics::counter!("http_requests_total", labels.iter()).increment(1);
    metrics::histogram!("http_request_duration_seconds", labels.iter()).record(took.as_secs_f64());
    // Only requests that ran any: the poll answered from memory (most of
    // a fleet's traffic) pays for no second histogram.
    if statements > 0 {
        metrics::histogram!("http_request_db_statements", labels.iter()).record(f64::from(statements));
    }
}

/// Label values without an allocation per request (the hot device paths).
pub(super) fn static_method(method: &axum::http::Method) -> &'static str {
    match *method {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn static_status(status: u16) -> Option<&'static str> {
    Some(match status {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        413 => "413",
        500 => "500",
        503 => "503",
        _ => return None,
    })
}

pub async fn render(State(state): State<HttpState>) -> impl IntoResponse {
    let handle = crate::telemetry::metrics();
    record_pool(&state.app.db);
    match job_counts(&state.app.db).await {
        Ok(counts) => {
            for (job_state, n) in counts {
                metrics::gauge!("jobs", "state" => job_state).set(n as f64);
            }
        }
        Err(err) => tracing::warn!(error = %err, "counting jobs for /metrics failed"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
}

fn record_pool(db: &DatabaseConnection) {
    let (size, idle) = match db.get_database_backend() {
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => return,
    };
    metrics::gauge!("db_pool_connections").set(f64::from(size));
    metrics::gauge!("db_pool_idle_connections").set(idle as f64);
}

async fn job_counts(db: &DatabaseConnection) -> Result<Vec<(String, i64)>, sea_orm::DbErr> {
    let mut counts: Vec<(String, i64)> = job::Entity::find()
        .select_only()
        .column(job::Column::State)
        .column_as(Expr::expr(Func::count(Expr::col(job::Column::Id))), "n")
        .group_by(job::Column::State)
        .into_tuple()
        .all(db)
        .await?;
    // Report every state, zero included, so a drained queue reads as 0.
    for known in ["queued", "running", "done", "failed"] {
        if !counts.iter().any(|(s, _)| s == known) {
            counts.push((known.to_owned(), 0));
        }
    }
    Ok(counts)
}
