//! `/.well-known/otadepot/keys`: the public keys that verify device
//! manifests, as a JWK set (RFC 8037 `OKP` / `Ed25519`), the active key
//! first. Public by design: firmware fetches it without credentials.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::HttpState;

pub async fn get(State(state): State<HttpState>) -> impl IntoResponse {
    let keys: Vec<serde_json::Value> =
        crate::service::package::public_keys(&state.app).iter().map(crate::signing::PublicKey::jwk).collect();
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(serde_json::json!({ "keys": keys })))
}
