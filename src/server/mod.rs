//! The HTTP server (warp): webhook intake, health, metrics, reload and status. warp types stay
//! in this module. [`serve`] runs on any listener, so tests bind port 0 and drive the real
//! server over a real socket.

mod admin;
mod api;
mod ingest;

use crate::app::App;
use crate::event::Source;
use crate::store::{Committer, Store};
use serde_json::json;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// Largest webhook body accepted (413 past it).
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// What every handler needs.
#[derive(Clone)]
pub struct State {
    /// Shared router state.
    pub app: Arc<App>,
    /// The delivery store (history, dead letters, readiness).
    pub store: Store,
    /// Where accepted events are committed, grouped across requests.
    pub committer: Committer,
    /// The mounted webhook sources.
    pub sources: Arc<Vec<Arc<dyn Source>>>,
}

/// Serves the router's HTTP interface on `listener` until `shutdown` resolves, then stops
/// accepting connections and finishes the requests in progress.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: State,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

/// Every route of the router.
pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let webhook = warp::post()
        .and(warp::path!("webhooks" / String))
        .and(limited_body())
        .and(with_state.clone())
        .then(ingest::receive);
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    let readyz = warp::get()
        .and(warp::path!("readyz"))
        .and(with_state.clone())
        .then(admin::ready);
    let metrics = warp::get()
        .and(warp::path!("metrics"))
        .and(with_state.clone())
        .then(admin::metrics);
    let reload = warp::post()
        .and(warp::path!("-" / "reload"))
        .and(with_state.clone())
        .then(admin::reload);
    let status = warp::get()
        .and(warp::path!("api" / "status"))
        .and(with_state.clone())
        .then(admin::status);
    let api = api::routes(with_state);
    webhook
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(reload)
        .unify()
        .or(status)
        .unify()
        .or(api)
        .unify()
        .recover(rejection)
        .unify()
}

/// The request body, refused with 413 as soon as it passes [`MAX_BODY_BYTES`], whether the
/// client announced its length or streams it chunked.
fn limited_body() -> impl Filter<Extract = (bytes::Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(collect_body)
}

async fn collect_body<S, B>(
    announced: Option<u64>,
    body: S,
) -> Result<bytes::Bytes, warp::Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures_util::TryStreamExt;
    if announced.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(warp::reject::custom(TooLarge));
    }
    let mut collected = bytes::BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(mut chunk) = body
        .try_next()
        .await
        .map_err(|_| warp::reject::custom(BadBody))?
    {
        if collected.len() + chunk.remaining() > MAX_BODY_BYTES as usize {
            return Err(warp::reject::custom(TooLarge));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            collected.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(collected.freeze())
}

#[derive(Debug)]
struct TooLarge;
impl warp::reject::Reject for TooLarge {}

#[derive(Debug)]
struct BadBody;
impl warp::reject::Reject for BadBody {}

/// A JSON error answer: `{"error": "…"}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({"error": message.into()})), status)
        .into_response()
}

async fn rejection(r: warp::Rejection) -> Result<Response, Infallible> {
    use warp::reject::{MethodNotAllowed, PayloadTooLarge};
    Ok(if r.is_not_found() {
        error(StatusCode::NOT_FOUND, "no such endpoint")
    } else if r.find::<PayloadTooLarge>().is_some() || r.find::<TooLarge>().is_some() {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    } else if r.find::<BadBody>().is_some() {
        error(
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )
    } else if r.find::<MethodNotAllowed>().is_some() {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint",
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        error(StatusCode::BAD_REQUEST, format!("bad query string: {e}"))
    } else {
        error(StatusCode::BAD_REQUEST, "bad request")
    })
}
