//! `POST /webhooks/{source}`: parse, normalise, match, queue, answer. The answer never waits on
//! a delivery.

use super::{State, error};
use crate::delivery::Job;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// Receives one webhook delivery.
pub(super) fn receive(source: String, body: bytes::Bytes, state: State) -> Response {
    let counters = &state.app.counters;
    let Some(normaliser) = state.sources.iter().find(|s| s.name() == source) else {
        counters.events_rejected.fetch_add(1, Ordering::Relaxed);
        let known: Vec<&str> = state.sources.iter().map(|s| s.name()).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown source {source:?}; this router receives: {}",
                known.join(", ")
            ),
        );
    };
    let payload = match parse(&body) {
        Ok(p) => p,
        Err(message) => {
            counters.events_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(source, reason = %message, "Webhook rejected.");
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let mut event = normaliser.normalise(&payload);
    let event_id = uuid::Uuid::now_v7().to_string();
    event["event_id"] = Value::String(event_id.clone());
    let config = state.app.current();
    let rules = config.rules.matching(&event);
    let (kind, sent) = crate::event::event_type(&event);
    tracing::info!(
        event_id,
        source,
        event = kind,
        sent_as = sent,
        matched = rules.len(),
        "Event received."
    );
    if !rules.is_empty() {
        let job = Job {
            event: Arc::new(event),
            config,
            rules,
        };
        if state.queue.submit(job).is_err() {
            counters.events_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!(event_id, "Event refused: the delivery queue is full.");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the router is busy; retry later",
            );
            r.headers_mut()
                .insert("retry-after", warp::http::HeaderValue::from_static("5"));
            return r;
        }
    }
    counters.events_accepted.fetch_add(1, Ordering::Relaxed);
    warp::reply::json(&json!({"status": "received", "event_id": event_id})).into_response()
}

/// The body as a JSON object, or a message that says what is wrong with it.
fn parse(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty; expected a JSON object".into());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "the body must be a JSON object, not {}",
            kind(&other)
        )),
        Err(e) => Err(format!("the body is not valid JSON: {e}")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
