//! The HTTP server (warp): webhook intake, health, metrics, reload, status and the API. This is
//! the only module that knows warp. [`serve`] runs on any listener until its shutdown future
//! resolves.

mod access;
mod admin;
mod api;
pub mod connections;
pub mod console;
mod ingest;
mod limit;
mod probe;
mod silences;
pub mod views;

pub use access::{AdminAccess, BadHostName};
pub use limit::Limiter;
pub use probe::ProbeCounts;

use crate::app::App;
use crate::delivery::Handoff;
use crate::store::{Committer, Store};
use access::{Refused, admin_only};
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
pub struct State {
    /// Shared router state.
    pub app: Arc<App>,
    /// The delivery store (history, dead letters, readiness).
    pub store: Store,
    /// Where accepted events are committed, grouped across requests.
    pub committer: Committer,
    /// Where the deliveries of a committed event go straight to this instance's workers.
    pub handoff: Handoff,
    /// Who may use the admin endpoints.
    pub access: AdminAccess,
    /// Failed webhook requests per client.
    pub limiter: Limiter,
    /// The delivery counts `/readyz` and `/metrics` answer with.
    pub probes: ProbeCounts,
    /// `/readyz` answers 503 past this many pending deliveries.
    pub ready_max_pending: u64,
    /// How long a webhook's answer waits for its commit (then 503), and how long a write may
    /// be under way before `/readyz` says the store is stalled.
    pub answer_deadline: std::time::Duration,
    /// Webhooks waiting for their commit at most (past it: 503 at once).
    pub intakes: Arc<tokio::sync::Semaphore>,
    /// The listener's limits (connections, header and request deadlines).
    pub limits: connections::Limits,
    /// The web console (`None`: `--console off`).
    pub console: Option<console::Console>,
    /// Cancelled when the router begins to shut down: long answers (the console's live view)
    /// end then.
    pub closing: tokio_util::sync::CancellationToken,
}

/// Serves the router's HTTP interface on `listener` until `shutdown` resolves, then stops
/// accepting connections and finishes the requests in progress.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: State,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let closing = state.closing.clone();
    let shutdown = async move {
        shutdown.await;
        closing.cancel();
    };
    let limits = state.limits.clone();
    connections::serve(listener, routes(state), limits, shutdown).await;
}

/// Every route of the router.
pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // One allocation for all: a request clones one pointer, not every handle in `State`.
    let state = Arc::new(state);
    let console = console::routes(state.clone());
    let admin = admin_only(state.clone());
    let with_state = warp::any().map(move || state.clone());
    let token_segment = warp::path::param::<String>()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let webhook = warp::post()
        .and(warp::path("webhooks"))
        .and(warp::path::param::<String>())
        .and(token_segment)
        .and(warp::path::end())
        .and(query)
        .and(peer())
        .and(warp::header::headers_cloned())
        .and(with_state.clone())
        .and_then(ingest::admit)
        .and(warp::body::stream())
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
        .and(admin.clone())
        .and(with_state.clone())
        .then(admin::reload);
    let status = warp::get()
        .and(warp::path!("api" / "status"))
        .and(admin.clone())
        .and(with_state.clone())
        .then(admin::status);
    let api = warp::path("api").and(admin).and(api::routes(with_state));
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
        .or(console)
        .unify()
        .recover(rejection)
        .unify()
}

/// The address the request's connection came from.
pub(crate) fn peer()
-> impl Filter<Extract = (Option<std::net::SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<connections::Peer>().map(|p: Option<connections::Peer>| p.map(|p| p.0))
}

/// Why a body could not be collected.
pub(crate) enum BodyError {
    /// Past [`MAX_BODY_BYTES`].
    TooLarge,
    /// The connection failed mid-body.
    Broken,
}

/// Collects a request body, giving up as soon as it passes [`MAX_BODY_BYTES`], whether the
/// client announced its length or streams it chunked.
pub(crate) async fn collect_body<S, B>(
    announced: Option<u64>,
    body: S,
) -> Result<bytes::Bytes, BodyError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures_util::TryStreamExt;
    if announced.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(BodyError::TooLarge);
    }
    let mut collected = bytes::BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(mut chunk) = body.try_next().await.map_err(|_| BodyError::Broken)? {
        if collected.len() + chunk.remaining() > MAX_BODY_BYTES as usize {
            return Err(BodyError::TooLarge);
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

/// A JSON error answer: `{"error": "…"}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({"error": message.into()})), status)
        .into_response()
}

async fn rejection(r: warp::Rejection) -> Result<Response, Infallible> {
    use warp::reject::{MethodNotAllowed, PayloadTooLarge};
    Ok(if r.is_not_found() {
        error(StatusCode::NOT_FOUND, "no such endpoint")
    } else if let Some(refused) = r.find::<Refused>() {
        match refused {
            Refused::Unauthorized(m) => {
                let mut resp = error(StatusCode::UNAUTHORIZED, *m);
                resp.headers_mut().insert(
                    "www-authenticate",
                    warp::http::HeaderValue::from_static("Bearer"),
                );
                resp
            }
            Refused::Forbidden(m) => error(StatusCode::FORBIDDEN, *m),
            Refused::ForeignHost(m) => error(StatusCode::FORBIDDEN, m.as_str()),
            Refused::RateLimited(wait) => too_many(*wait),
        }
    } else if let Some(h) = r.find::<warp::reject::InvalidHeader>() {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "the {} header is not valid, or names another host than the request's target",
                h.name()
            ),
        )
    } else if r.find::<PayloadTooLarge>().is_some() {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
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

/// 429 with `Retry-After` in whole seconds (at least 1).
pub(crate) fn too_many(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed requests from this client; retry in {secs} s"),
    );
    if let Ok(v) = warp::http::HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert("retry-after", v);
    }
    resp
}
