//! `/api/deliveries` and `/api/dlq`: delivery history and dead letters over HTTP, the same
//! operations as `switchboard deliveries` and `switchboard dlq` (and `/api/silences`, see
//! `silences`).

use super::{State, error};
use crate::store::{DeliveryStatus, Filter};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use warp::Filter as _;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// Query parameters of `GET /api/deliveries`.
#[derive(Debug, Deserialize)]
struct Query {
    status: Option<DeliveryStatus>,
    rule: Option<String>,
    lead: Option<String>,
    limit: Option<u32>,
}

/// The `/api/deliveries` and `/api/dlq` routes.
pub(super) fn routes(
    with_state: impl warp::Filter<Extract = (Arc<State>,), Error = Infallible>
    + Clone
    + Send
    + Sync
    + 'static,
) -> impl warp::Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let deliveries = warp::get()
        .and(warp::path!("deliveries"))
        .and(warp::query::<Query>())
        .and(with_state.clone())
        .then(|q: Query, s: Arc<State>| async move {
            let filter = Filter {
                status: q.status,
                rule: q.rule,
                lead: q.lead,
                limit: q.limit,
                with_history: false,
            };
            list(s, filter).await
        });
    let dlq = warp::get()
        .and(warp::path!("dlq"))
        .and(with_state.clone())
        .then(|s: Arc<State>| list(s, Filter::dead_letters()));
    let retry_one = warp::post()
        .and(warp::path!("dlq" / i64 / "retry"))
        .and(with_state.clone())
        .then(|id: i64, s: Arc<State>| retry(s, Some(id)));
    let retry_all = warp::post()
        .and(warp::path!("dlq" / "retry"))
        .and(with_state.clone())
        .then(|s: Arc<State>| retry(s, None));
    let silences = super::silences::routes(with_state.clone());
    let discard = warp::post()
        .and(warp::path!("dlq" / i64 / "discard"))
        .and(with_state)
        .then(|id: i64, s: Arc<State>| async move {
            match s.store.discard(id).await {
                Ok(true) => warp::reply::json(&json!({"discarded": id})).into_response(),
                Ok(false) => error(
                    StatusCode::NOT_FOUND,
                    format!("no dead letter with id {id}"),
                ),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        });
    deliveries
        .or(dlq)
        .unify()
        .or(retry_one)
        .unify()
        .or(retry_all)
        .unify()
        .or(discard)
        .unify()
        .or(silences)
        .unify()
}

async fn list(s: Arc<State>, filter: Filter) -> Response {
    match s.store.list(&filter).await {
        Ok(list) => warp::reply::json(&json!({"deliveries": list})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn retry(s: Arc<State>, id: Option<i64>) -> Response {
    match s.store.retry_dead(id).await {
        Ok(0) if id.is_some() => error(
            StatusCode::NOT_FOUND,
            format!("no dead letter with id {}", id.unwrap_or_default()),
        ),
        Ok(n) => {
            s.app.wake.notify_one();
            warp::reply::json(&json!({"requeued": n})).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
