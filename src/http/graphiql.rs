//! GraphiQL served from the binary: the page async-graphql generates, with
//! its scripts and styles pointed at copies compiled in (assets/graphiql/)
//! instead of unpkg.com, so it works without internet access.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The path the assets are served under (versioned, so cacheable for good).
const BASE: &str = "/graphiql/4.1.2";

const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "graphiql.min.js",
        "application/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/graphiql.min.js"),
    ),
    ("graphiql.min.css", "text/css; charset=utf-8", include_bytes!("../../assets/graphiql/graphiql.min.css")),
    (
        "react.production.min.js",
        "application/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "application/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/react-dom.production.min.js"),
    ),
];

/// The GraphiQL page for `/graphql`, subscriptions on `/graphql/ws`.
pub fn page() -> String {
    let html = async_graphql::http::GraphiQLSource::build()
        .endpoint("/graphql")
        .subscription_endpoint("/graphql/ws")
        .title("otadepot GraphiQL")
        .finish();
    html.replace("https://unpkg.com/react@18/umd/react.development.js", &format!("{BASE}/react.production.min.js"))
        .replace(
            "https://unpkg.com/react-dom@18/umd/react-dom.development.js",
            &format!("{BASE}/react-dom.production.min.js"),
        )
        .replace("https://unpkg.com/graphiql@4/graphiql.min.css", &format!("{BASE}/graphiql.min.css"))
        .replace("https://unpkg.com/graphiql@4/graphiql.min.js", &format!("{BASE}/graphiql.min.js"))
        .replace("<link rel=\"icon\" href=\"https://graphql.org/favicon.ico\">", "")
}

/// `GET /graphiql/4.1.2/{file}`.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")],
            *body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
