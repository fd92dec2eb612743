//! The HTTP server (warp): webhook intake, health, metrics, reload and status. warp types stay
//! in this module. [`serve`] runs on any listener, so tests bind port 0 and drive the real
//! server over a real socket.

mod admin;
mod ingest;

use crate::app::App;
use crate::delivery::Queue;
use crate::event::Source;
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
    /// Where accepted events go.
    pub queue: Queue,
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
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .map(ingest::receive);
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    let readyz = warp::get()
        .and(warp::path!("readyz"))
        .and(with_state.clone())
        .map(admin::ready);
    let metrics = warp::get()
        .and(warp::path!("metrics"))
        .and(with_state.clone())
        .map(admin::metrics);
    let reload = warp::post()
        .and(warp::path!("-" / "reload"))
        .and(with_state.clone())
        .then(admin::reload);
    let status = warp::get()
        .and(warp::path!("api" / "status"))
        .and(with_state)
        .map(admin::status);
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
        .recover(rejection)
        .unify()
}

/// A JSON error answer: `{"error": "…"}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({"error": message.into()})), status).into_response()
}

async fn rejection(r: warp::Rejection) -> Result<Response, Infallible> {
    use warp::reject::{LengthRequired, MethodNotAllowed, PayloadTooLarge};
    Ok(if r.is_not_found() {
        error(StatusCode::NOT_FOUND, "no such endpoint")
    } else if r.find::<PayloadTooLarge>().is_some() {
        error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_BODY_BYTES} bytes"))
    } else if r.find::<LengthRequired>().is_some() {
        error(StatusCode::LENGTH_REQUIRED, "a Content-Length header is required")
    } else if r.find::<MethodNotAllowed>().is_some() {
        error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
    } else {
        error(StatusCode::BAD_REQUEST, format!("bad request: {r:?}"))
    })
}
