//! Staleness as a layer: while the broker is out of reach, every answer that
//! passes through [`StaleLayer`] gets `X-Args-Stale: true`, so no handler
//! has to remember to add it.
//!
//! The layer wraps the handlers of `/args` (see `http::app`): whether the
//! broker is reachable is read once the handler has answered, and the header
//! goes after the handler's own headers (axum adds `content-length` later).
use argsbroker::client::Live;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

/// Present (`true`) while the worker has lost its broker and serves its last args.
pub const X_ARGS_STALE: HeaderName = HeaderName::from_static("x-args-stale");

/// Marks the answers of the service it wraps stale while `live` is not connected.
pub struct StaleLayer<T> {
    live: Live<T>,
}

impl<T> StaleLayer<T> {
    pub fn new(live: Live<T>) -> Self {
        Self { live }
    }
}

impl<T> Clone for StaleLayer<T> {
    fn clone(&self) -> Self {
        Self::new(self.live.clone())
    }
}

impl<S, T> Layer<S> for StaleLayer<T> {
    type Service = Stale<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        Stale {
            inner,
            live: self.live.clone(),
        }
    }
}

/// The service [`StaleLayer`] makes.
pub struct Stale<S, T> {
    inner: S,
    live: Live<T>,
}

impl<S: Clone, T> Clone for Stale<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            live: self.live.clone(),
        }
    }
}

impl<S, T, R> Service<R> for Stale<S, T>
where
    S: Service<R, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = StaleFuture<S::Future, T>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        StaleFuture {
            inner: self.inner.call(request),
            live: self.live.clone(),
        }
    }
}

pin_project! {
    /// The answer of the wrapped service, marked once it is ready.
    pub struct StaleFuture<F, T> {
        #[pin]
        inner: F,
        live: Live<T>,
    }
}

impl<F, T, E> Future for StaleFuture<F, T>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if !this.live.is_connected() {
            response
                .headers_mut()
                .insert(X_ARGS_STALE, HeaderValue::from_static("true"));
        }
        Poll::Ready(Ok(response))
    }
}
