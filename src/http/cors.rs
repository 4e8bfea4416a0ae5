//! CORS for the admin web UI, applied only where it belongs.
//!
//! tower-http's `Cors` answers every OPTIONS request as a preflight. A
//! plain OPTIONS (tus clients ask the server's capabilities with one) must
//! reach its route, so only a real preflight (OPTIONS with
//! `Access-Control-Request-Method`) goes through `Cors`'s preflight path.

use std::task::{Context, Poll};

use axum::http::{Method, Request};
use futures::future::Either;
use tower::{Layer, Service};
use tower_http::cors::{Cors, CorsLayer};

#[derive(Clone)]
pub struct PreflightOnlyCorsLayer(pub CorsLayer);

impl<S: Clone> Layer<S> for PreflightOnlyCorsLayer {
    type Service = PreflightOnlyCors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PreflightOnlyCors { cors: self.0.layer(inner.clone()), plain: inner }
    }
}

#[derive(Clone)]
pub struct PreflightOnlyCors<S> {
    cors: Cors<S>,
    plain: S,
}

impl<S, B, R> Service<Request<B>> for PreflightOnlyCors<S>
where
    S: Service<Request<B>, Response = axum::http::Response<R>> + Clone,
    R: Default,
{
    type Response = axum::http::Response<R>;
    type Error = S::Error;
    type Future = Either<<Cors<S> as Service<Request<B>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both wrap the same inner service.
        match self.cors.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.plain.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let plain_options =
            request.method() == Method::OPTIONS && !request.headers().contains_key("access-control-request-method");
        if plain_options { Either::Right(self.plain.call(request)) } else { Either::Left(self.cors.call(request)) }
    }
}
