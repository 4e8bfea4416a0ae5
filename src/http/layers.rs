//! The request-wide middleware as plain tower services: unlike
//! `middleware::from_fn`, they neither box nor clone the inner stack per
//! request, which matters on the device API's hot path.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::REQUEST_ID;

/// Every request gets an `x-request-id`: the client's when it is short and
/// printable (so it cannot forge log lines), otherwise a fresh UUID. It is
/// in the request's headers (for the trace span and the audit trail) and
/// on the response.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
}

fn sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

fn fresh_id() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

impl<S, B, R> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = match request.headers().get(REQUEST_ID) {
            Some(value) if sane(value) => value.clone(),
            _ => {
                let id = fresh_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        RequestIdFuture { inner: self.inner.call(request), id: Some(id) }
    }
}

pin_project! {
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(id)) = (&mut result, this.id.take()) {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        Poll::Ready(result)
    }
}

/// Count and time every request by route template, method and status
/// (`http_requests_total`, `http_request_duration_seconds`), with the
/// database statements it ran when it ran any (`http_request_db_statements`). A route
/// layer: the matched route is known there.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Metrics<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for Metrics<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route: metrics::SharedString = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(metrics::SharedString::const_str("unmatched"), |p| p.as_str().to_owned().into());
        let method = super::metrics::static_method(request.method());
        MetricsFuture {
            inner: crate::db::count_statements(self.inner.call(request)),
            route: Some(route),
            method,
            started: Instant::now(),
        }
    }
}

pin_project! {
    pub struct MetricsFuture<F> {
        #[pin]
        inner: tokio::task::futures::TaskLocalFuture<std::cell::Cell<u32>, F>,
        route: Option<metrics::SharedString>,
        method: &'static str,
        started: Instant,
    }
}

impl<F, R, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll(cx));
        if let (Ok(response), Some(route)) = (&result, this.route.take()) {
            let statements = crate::db::statements_of(this.inner);
            super::metrics::record(route, this.method, response.status(), this.started.elapsed(), statements);
        }
        Poll::Ready(result)
    }
}
