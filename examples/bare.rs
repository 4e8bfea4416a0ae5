//! The reference of the poll benchmark (bench/deployments.sh): a bare axum
//! route answering 204, on the same runtime and machine as otadepot.
//!
//!     cargo run --release --example bare -- 127.0.0.1:9000

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let app = Router::new().route("/device/v1/poll", get(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
