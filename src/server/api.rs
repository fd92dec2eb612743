//! `/api/deliveries` and `/api/dlq`: delivery history and dead letters over HTTP, the same
//! operations as `switchboard deliveries` and `switchboard dlq` (and `/api/silences`, see
//! `silences`).

use super::views::{self, EventQuery, PlaygroundInput};
use super::{State, error};
use crate::store::console::DeadFilter;
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
) -> warp::filters::BoxedFilter<(Response,)> {
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
    let events = warp::get()
        .and(warp::path!("events"))
        .and(warp::query::<EventQuery>())
        .and(with_state.clone())
        .then(|q: EventQuery, s: Arc<State>| async move {
            let filter = match q.filter() {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            match s.store.events(&filter).await {
                Ok(page) => warp::reply::json(&page).into_response(),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        });
    let event = warp::get()
        .and(warp::path!("events" / String))
        .and(with_state.clone())
        .then(|id: String, s: Arc<State>| async move {
            match s.store.event(&id).await {
                Ok(Some(detail)) => warp::reply::json(&detail).into_response(),
                Ok(None) => error(StatusCode::NOT_FOUND, format!("no event with id {id}")),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        });
    let dlq_count = warp::get()
        .and(warp::path!("dlq" / "count"))
        .and(warp::query::<DeadQuery>())
        .and(with_state.clone())
        .then(|q: DeadQuery, s: Arc<State>| async move {
            match s.store.count_dead(&q.filter()).await {
                Ok(n) => warp::reply::json(&json!({"count": n})).into_response(),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        });
    // (A bare `POST /api/dlq/retry`, with no body and perhaps no Content-Length, retries
    // every dead letter.)
    let dlq_bulk = warp::post()
        .and(warp::path!("dlq" / String))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(with_state.clone())
        .then(
            |op: String, length: Option<u64>, body, s: Arc<State>| async move {
                match super::collect_body(length, body).await {
                    Ok(body) => bulk(s, op, body).await,
                    Err(super::BodyError::TooLarge) => error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is larger than {} bytes", super::MAX_BODY_BYTES),
                    ),
                    Err(super::BodyError::Broken) => {
                        error(StatusCode::BAD_REQUEST, "the body could not be read")
                    }
                }
            },
        );
    let playground = warp::post()
        .and(warp::path!("playground"))
        .and(warp::body::content_length_limit(2 * 1024 * 1024))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .then(|body: bytes::Bytes, s: Arc<State>| async move {
            let input: PlaygroundInput = match serde_json::from_slice(&body) {
                Ok(i) => i,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("the body is not {{\"event\": {{…}}, \"rules\": \"…\"}}: {e}"),
                    );
                }
            };
            match views::playground(&s, input).await {
                Ok(report) => warp::reply::json(&report).into_response(),
                Err(e) => warp::reply::with_status(
                    warp::reply::json(&e),
                    StatusCode::UNPROCESSABLE_ENTITY,
                )
                .into_response(),
            }
        });
    let destinations = warp::get()
        .and(warp::path!("destinations"))
        .and(with_state.clone())
        .then(|s: Arc<State>| async move {
            match views::destinations(&s).await {
                Ok(d) => warp::reply::json(&json!({"destinations": d})).into_response(),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        });
    let refused = warp::get()
        .and(warp::path!("refused"))
        .and(with_state.clone())
        .then(|s: Arc<State>| async move {
            match s.store.refused(100).await {
                Ok(r) => warp::reply::json(&json!({"refused": r})).into_response(),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        });
    let overview = warp::get()
        .and(warp::path!("overview"))
        .and(with_state.clone())
        .then(|s: Arc<State>| async move {
            match views::overview(&s).await {
                Ok(o) => warp::reply::json(&o).into_response(),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        });
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
    let all: Vec<warp::filters::BoxedFilter<(Response,)>> = vec![
        deliveries.boxed(),
        dlq.boxed(),
        retry_one.boxed(),
        discard.boxed(),
        silences.boxed(),
        events.boxed(),
        event.boxed(),
        dlq_count.boxed(),
        dlq_bulk.boxed(),
        playground.boxed(),
        destinations.boxed(),
        refused.boxed(),
        overview.boxed(),
    ];
    all.into_iter()
        .reduce(|a, b| a.or(b).unify().boxed())
        .expect("routes")
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

/// The dead letters a bulk action or a count applies to, from a query string.
#[derive(Debug, Default, Deserialize)]
struct DeadQuery {
    rule: Option<String>,
    destination: Option<String>,
}

impl DeadQuery {
    fn filter(self) -> DeadFilter {
        DeadFilter {
            ids: Vec::new(),
            rule: self.rule.filter(|r| !r.is_empty()),
            destination: self.destination.filter(|d| !d.is_empty()),
        }
    }
}

/// The body of `POST /api/dlq/retry` and `/api/dlq/discard`: some ids, or a filter (an empty
/// filter is every dead letter); `expect` refuses the action when the filter no longer selects
/// that many (what the operator saw is what is done).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    #[serde(default)]
    ids: Vec<i64>,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    expect: Option<u64>,
}

/// Ids one bulk request may name (each is a bound parameter).
pub(super) const MAX_IDS: usize = 1000;

async fn bulk(s: Arc<State>, op: String, body: bytes::Bytes) -> Response {
    let retry = match op.as_str() {
        "retry" => true,
        "discard" => false,
        _ => return error(StatusCode::NOT_FOUND, "no such endpoint"),
    };
    let bulk: Bulk = if body.is_empty() {
        Bulk::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body is not {{\"ids\": [1, 2]}} or {{\"rule\": …, \"destination\": …, \"expect\": N}}: {e}"
                    ),
                );
            }
        }
    };
    if bulk.ids.len() > MAX_IDS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_IDS} ids at once; select by rule and destination for more"),
        );
    }
    let filter = DeadFilter {
        ids: bulk.ids,
        rule: bulk.rule.filter(|r| !r.is_empty()),
        destination: bulk.destination.filter(|d| !d.is_empty()),
    };
    if let Some(expected) = bulk.expect {
        match s.store.count_dead(&filter).await {
            Ok(n) if n != expected => {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "the filter selects {n} dead letters now, not {expected}; nothing was done"
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
    let done = match retry {
        true => s.store.retry_dead_where(&filter).await,
        false => s.store.discard_dead_where(&filter).await,
    };
    match done {
        Ok(n) => {
            if retry && n > 0 {
                s.app.wake.notify_one();
            }
            let key = if retry { "requeued" } else { "discarded" };
            warp::reply::json(&json!({ key: n })).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
