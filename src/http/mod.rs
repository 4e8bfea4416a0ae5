//! HTTP: the axum router, its middleware and the routes.
//!
//! Rule: a route parses its input, calls one service function and shapes
//! the answer; no permission check or business rule lives here.

mod cors;
mod ddi;
mod device;
mod enos;
pub mod extract;
mod graphiql;
mod graphql;
mod health;
mod keys;
mod layers;
mod metrics;
mod repository;
mod tus;
mod uploads;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware;
use axum::response::Response;
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};
use tracing::{Level, Span};

use crate::app::App;
use crate::graphql::ApiSchema;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone)]
pub struct HttpState {
    pub app: App,
    pub schema: ApiSchema,
}

pub fn router(app: App, schema: ApiSchema) -> Router {
    let config = &app.config;
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(
            config.http.cors_allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        ))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT, REQUEST_ID])
        .expose_headers([REQUEST_ID])
        .max_age(Duration::from_secs(600));
    let body_limit = config.http.max_body_bytes;
    let state = HttpState { app, schema };

    // CORS only where the admin web UI calls from the browser: not on the
    // device API (its hot path), health or metrics.
    let ui = Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/graphql/ws", get(graphql::ws))
        .route(
            "/uploads/tus/",
            axum::routing::post(tus::create).options(tus::options).layer(middleware::map_response(tus::tus_resumable)),
        )
        .route(
            "/uploads/tus/{id}",
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::delete)
                .options(tus::options)
                .layer(DefaultBodyLimit::disable())
                .layer(middleware::map_response(tus::tus_resumable)),
        )
        .route(
            "/uploads/content/{id}",
            axum::routing::post(uploads::post).put(uploads::put).layer(DefaultBodyLimit::disable()),
        )
        .route("/repo/sha256/{sha256}", get(repository::by_hash))
        .route("/repo/{id}/{name}", get(repository::by_id))
        .route("/.well-known/otadepot/keys", get(keys::get))
        .layer(cors::PreflightOnlyCorsLayer(cors));

    Router::new()
        .merge(ui)
        .route("/graphiql/4.1.2/{file}", get(graphiql::asset))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/device/v1/device", get(device::me))
        .route("/device/v1/inventory", axum::routing::post(device::inventory))
        .route("/device/v1/enroll", axum::routing::post(device::enroll))
        .route("/device/v1/poll", get(device::poll))
        .route("/device/v1/updates/{id}/status", axum::routing::post(device::update_status))
        .route("/device/v1/commands/{id}", axum::routing::post(device::command_status))
        .route("/checkversion", axum::routing::post(enos::check_version))
        .route("/version/{id}", get(enos::version))
        .route("/downloadresult/{id}", axum::routing::post(enos::download_result))
        .route("/updateresult", axum::routing::post(enos::update_result))
        .route("/{tenant}/controller/v1/{cid}", get(ddi::base))
        .route("/{tenant}/controller/v1/{cid}/deploymentBase/{action}", get(ddi::deployment_base))
        .route("/{tenant}/controller/v1/{cid}/deploymentBase/{action}/feedback", axum::routing::post(ddi::deployment_feedback))
        .route("/{tenant}/controller/v1/{cid}/cancelAction/{action}", get(ddi::cancel_action))
        .route("/{tenant}/controller/v1/{cid}/cancelAction/{action}/feedback", axum::routing::post(ddi::cancel_feedback))
        .route("/{tenant}/controller/v1/{cid}/configData", axum::routing::put(ddi::config_data))
        .route("/{tenant}/controller/v1/{cid}/installedBase/{action}", get(ddi::installed_base))
        .route("/{tenant}/controller/v1/{cid}/softwaremodules/{module}/artifacts/{filename}", get(ddi::artifact))
        .layer(layers::MetricsLayer)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(layers::RequestIdLayer)
                .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
                    let request_id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default();
                    tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id = %request_id)
                })
                .on_response(LogResponse))
                .layer(CatchPanicLayer::custom(panic_response)),
        )
}

/// Marks an answer as routine, a device poll with nothing new (204, 304):
/// logged at DEBUG, so a fleet's polls do not fill the log; they are still
/// counted in `/metrics` (`http_requests_total`).
#[derive(Clone, Copy, Debug)]
pub struct Routine;

/// Log each answer at INFO, a [`Routine`] one at DEBUG.
#[derive(Clone, Copy)]
struct LogResponse;

impl<B> OnResponse<B> for LogResponse {
    fn on_response(self, response: &http::Response<B>, latency: Duration, span: &Span) {
        let level = if response.extensions().get::<Routine>().is_some() { Level::DEBUG } else { Level::INFO };
        DefaultOnResponse::new().level(level).on_response(response, latency, span);
    }
}

/// The request id (accepted from the client or generated).
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A bug must not take the connection down with a bare reset: log it (in
/// the request's span) and answer INTERNAL like any internal error.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    axum::response::IntoResponse::into_response(crate::error::Error::internal(anyhow::anyhow!("panic: {detail}")))
}
