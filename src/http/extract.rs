//! Who calls: the one place that reads a request's credential. An
//! `Authorization` header's scheme is case-insensitive (RFC 9110 §11.1:
//! `Bearer`, `bearer`, `BEARER`), whitespace around scheme and token is
//! trimmed. Each kind of caller has one function here: the operator's
//! bearer token, the device's bearer secret (with a gateway's
//! `X-Device-Id`), the EnOS `assetId`, the enrollment token. A route keeps
//! the refusal it always gave (status and message); the service decides
//! whether the credential is good.

use axum::http::{HeaderMap, header};

use super::{HttpState, request_id};
use crate::app::App;
use crate::auth::{Actor, Ctx};
use crate::error::{Error, Result};
use crate::service::device_api;

/// Header with which a gateway names the sub-device it acts for.
pub const ACT_FOR: &str = "x-device-id";

/// What a request's `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// No header.
    Missing,
    /// `Bearer <token>`, in any case of the scheme; the token trimmed.
    Bearer(&'a str),
    /// A header that is not a bearer credential (another scheme, no token,
    /// not text).
    Malformed,
}

/// The `Authorization` header of `headers`.
pub fn authorization(headers: &HeaderMap) -> Authorization<'_> {
    match headers.get(header::AUTHORIZATION) {
        None => Authorization::Missing,
        Some(value) => match value.to_str().ok().and_then(bearer_value) {
            Some(token) => Authorization::Bearer(token),
            None => Authorization::Malformed,
        },
    }
}

/// The bearer token of `headers`, if it carries a well-formed one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    match authorization(headers) {
        Authorization::Bearer(token) => Some(token),
        Authorization::Missing | Authorization::Malformed => None,
    }
}

/// The token of a credential written `Bearer <token>` (the scheme in any
/// case, whitespace around either trimmed); None for anything else.
pub fn bearer_value(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The caller of an operator endpoint: anonymous without a header, the
/// operator its token names, or UNAUTHENTICATED for any other header.
pub async fn operator(app: &App, headers: &HeaderMap) -> Result<Ctx> {
    let actor = match authorization(headers) {
        Authorization::Missing => Actor::Anonymous,
        Authorization::Bearer(token) => Actor::User(crate::service::role::authenticate_operator(app, token).await?),
        Authorization::Malformed => {
            return Err(Error::Unauthenticated("Authorization must be \"Bearer <token>\"".into()));
        }
    };
    Ok(Ctx::new(actor, request_id(headers)))
}

/// The calling device, from its bearer secret; a gateway acting for a
/// sub-device names it in `X-Device-Id`.
pub async fn device(state: &HttpState, headers: &HeaderMap) -> Result<Ctx> {
    let token = bearer(headers).ok_or_else(|| Error::Unauthenticated("a device credential is required".into()))?;
    let ctx = device_api::authenticate(&state.app, token, request_id(headers)).await?;
    match headers.get(ACT_FOR) {
        None => Ok(ctx),
        Some(value) => {
            let endpoint_id = value.to_str().map_err(|_| Error::invalid(ACT_FOR, "not text"))?;
            device_api::act_for(&state.app, &ctx, endpoint_id.trim()).await
        }
    }
}

/// An EnOS caller: the device its secret names, or the sub-device
/// `asset_id` names (which it must be the gateway of).
pub async fn enos_asset(state: &HttpState, headers: &HeaderMap, asset_id: Option<&str>) -> Result<Ctx> {
    let ctx = device(state, headers).await?;
    device_api::enos::act_for_asset(&state.app, ctx, asset_id).await
}

/// The enrollment token a device enrolls with.
pub fn enrollment_token(headers: &HeaderMap) -> Result<&str> {
    bearer(headers)
        .filter(|t| crate::service::enrollment::is_enrollment_token(t))
        .ok_or_else(|| Error::Unauthenticated("an enrollment token is required".into()))
}

#[cfg(test)]
mod tests {
    use super::bearer_value;

    #[test]
    fn the_scheme_is_case_insensitive_and_whitespace_is_trimmed() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "  bEaReR   abc  ", "Bearer\tabc"] {
            assert_eq!(bearer_value(value), Some("abc"), "{value:?}");
        }
        for value in ["", "Bearer", "Bearer   ", "Basic abc", "Bearerabc", "abc", "Token abc"] {
            assert_eq!(bearer_value(value), None, "{value:?}");
        }
    }
}
