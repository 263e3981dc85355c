//! Limits that keep one client from tying up the manager: concurrent long-polls per caller and
//! agent, and a deadline on every request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use fleetlet_manifests::AgentId;
use fleetlet_manifests::api::ErrorKind;
use tower::{Layer, Service};

use super::error::HttpError;
use super::extract::Caller;
use crate::metrics::Metrics;

/// How many long-polls one caller may hold open on one agent at once. An agent needs one; a few
/// more cover a restart racing its predecessor's poll, and nothing legitimate needs dozens.
pub const MAX_LONG_POLLS_PER_CALLER: usize = 4;

/// The most any request may take from its first byte to its answer: the longest long-poll
/// plus time for the store and a slow body. A client trickling a body in forever is cut off here.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(super::MAX_WAIT_SECONDS + 15);

/// Who holds how many long-polls. Keyed by caller and watched agent: an agent token can only
/// watch its own agent, so for agents this is "per token"; a dashboard's reader token gets its
/// own allowance per agent it watches.
#[derive(Debug, Clone, Default)]
pub struct LongPolls {
    held: Arc<Mutex<HashMap<(Caller, AgentId), usize>>>,
}

impl LongPolls {
    /// Takes a slot for one long-poll, or answers 429 when the caller already holds the limit.
    /// The slot is given back when the returned guard is dropped, however the request ends.
    pub fn acquire(&self, caller: &Caller, agent_id: &AgentId) -> Result<LongPollSlot, HttpError> {
        let key = (caller.clone(), agent_id.clone());
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key.clone()).or_default();
        if *count >= MAX_LONG_POLLS_PER_CALLER {
            return Err(HttpError::new(
                ErrorKind::TooManyRequests,
                format!(
                    "at most {MAX_LONG_POLLS_PER_CALLER} long-polls per token and agent may be open at once"
                ),
            ));
        }
        *count += 1;
        Ok(LongPollSlot {
            polls: self.clone(),
            key: Some(key),
        })
    }

    /// How many long-polls are open in total (for tests and metrics).
    pub fn open(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum()
    }
}

/// One held long-poll slot; dropping it frees the slot.
#[derive(Debug)]
pub struct LongPollSlot {
    polls: LongPolls,
    key: Option<(Caller, AgentId)>,
}

impl Drop for LongPollSlot {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut held = self
            .polls
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&key) {
            *count = count.saturating_sub(1);
            // Entries of callers that went away are removed, so the map stays bounded by the
            // number of open polls.
            if *count == 0 {
                held.remove(&key);
            }
        }
    }
}

/// The layer every request passes: it refuses an oversized head, puts the deadline on the
/// request, and records it in the metrics. Written as one `tower` service rather than three
/// `from_fn` middlewares, because an agent's long-poll holds its request for minutes and every
/// `from_fn` layer holds a boxed future with copies of the request for that long; this one holds
/// the inner future, the deadline's timer and what the metrics need (BENCHMARKS.md, target 6).
#[derive(Debug, Clone)]
pub struct GuardLayer {
    metrics: Metrics,
}

impl GuardLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`GuardLayer`].
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<Request> for Guard<S>
where
    S: Service<Request, Response = axum::http::Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let long_poll = is_long_poll(
            &method,
            route.as_ref().map(MatchedPath::as_str),
            request.uri().query(),
        );
        let metrics = self.metrics.clone();
        let answer = match oversized_head(&request) {
            Some(refusal) => Err(refusal),
            None => Ok(self.inner.call(request)),
        };
        Box::pin(async move {
            let response = match answer {
                Ok(answer) => within_deadline(answer).await,
                Err(refusal) => refusal,
            };
            metrics.observe(
                &method,
                route.as_ref(),
                long_poll,
                started,
                response.status(),
            );
            Ok(response)
        })
    }
}

/// Whether a request is a manifest long-poll, from its method, matched route and query: the same
/// test the handler applies (`waitSeconds` above zero) before it takes a long-poll slot.
fn is_long_poll(method: &Method, route: Option<&str>, query: Option<&str>) -> bool {
    method == Method::GET
        && route == Some(super::MANIFEST_ROUTE)
        && query.is_some_and(|query| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .any(|(name, value)| {
                    name == "waitSeconds" && value.parse::<u64>().is_ok_and(|wait| wait > 0)
                })
        })
}

/// A request whose target and headers together exceed [`crate::server::MAX_HEADER_BYTES`] is
/// answered 431 before any handler runs. hyper's read buffer limit only bounds a head that
/// arrives in pieces; this bounds every head exactly.
fn oversized_head(request: &Request) -> Option<Response> {
    let limit = crate::server::MAX_HEADER_BYTES;
    let size = request.uri().to_string().len().saturating_add(
        request
            .headers()
            .iter()
            // ": " and CRLF around every field, as on the wire.
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>(),
    );
    (size > limit).then(|| {
        HttpError::new(
            ErrorKind::HeadersTooLarge,
            format!("the request line and headers exceed {limit} bytes"),
        )
        .into_response()
    })
}

/// A request that takes longer than [`REQUEST_TIMEOUT`] is answered 408 and its handler dropped
/// (which also frees any long-poll slot it held).
async fn within_deadline<B>(
    answer: impl Future<Output = Result<axum::http::Response<B>, Infallible>>,
) -> Response
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
        Ok(Ok(response)) => response.map(Body::new),
        Ok(Err(never)) => match never {},
        Err(_) => HttpError::new(
            ErrorKind::RequestTimeout,
            format!(
                "the request did not finish within {} seconds",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests;
