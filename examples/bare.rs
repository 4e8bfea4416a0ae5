//! The reference of the poll benchmarks (bench/poll304.sh,
//! bench/ddi_poll.sh): bare axum routes answering 204 (the `/device/v1`
//! poll) and an idle hawkBit DDI base poll's JSON, on the same runtime and
//! machine as otadepot.
//!
//!     cargo run --release --example bare -- 127.0.0.1:9000

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::routing::get;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let ddi_base = format!("http://{addr}");
    let app = Router::new().route("/device/v1/poll", get(|| async { StatusCode::NO_CONTENT })).route(
        "/{tenant}/controller/v1/{cid}",
        // The answer otadepot gives an idle DDI device that has not sent
        // its attributes: the same bytes, built per request.
        get(move |Path((tenant, cid)): Path<(String, String)>| {
            let body = format!(
                r#"{{"config":{{"polling":{{"sleep":"00:05:00"}}}},"_links":{{"configData":{{"href":"{ddi_base}/{tenant}/controller/v1/{cid}/configData"}}}}}}"#
            );
            async move { ([(header::CONTENT_TYPE, "application/hal+json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
