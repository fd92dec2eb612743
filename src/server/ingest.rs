//! `POST /webhooks/{source}`: parse, normalise, match, commit, answer. The `200` means the event
//! and its deliveries are on disk; it never waits on a delivery being sent.

use super::{State, error};
use crate::store::{Intake, NewDelivery, NewEvent};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// Receives one webhook delivery.
pub(super) async fn receive(source: String, body: bytes::Bytes, state: State) -> Response {
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
    let matched = config.rules.matching(&event);
    let (kind, sent) = crate::event::event_type(&event);
    let (kind, sent) = (kind.to_string(), sent.to_string());
    let deliveries = matched
        .iter()
        .flat_map(|&i| {
            let rule = config.rules.get(i);
            rule.actions
                .iter()
                .enumerate()
                .map(|(n, step)| NewDelivery {
                    rule: rule.name.clone(),
                    action_index: n as u32,
                    action_kind: step.action.kind().to_string(),
                    destination: step.destination.clone(),
                })
        })
        .collect::<Vec<_>>();
    let record = NewEvent {
        id: event_id.clone(),
        source: source.clone(),
        event_type: kind.clone(),
        lead_email: event["lead"]["email"].as_str().map(str::to_string),
        config_hash: config.hash.clone(),
        payload: event.to_string(),
        dedup_key: normaliser.dedup_key(&payload, &body),
        deliveries,
    };
    let deliveries = record.deliveries.len();
    match state.committer.submit(record).await {
        Ok(Intake::Accepted) => {
            counters.events_accepted.fetch_add(1, Ordering::Relaxed);
            if deliveries > 0 {
                state.app.wake.notify_one();
            }
            tracing::info!(
                event_id,
                source,
                event = kind,
                sent_as = sent,
                rules = matched.len(),
                deliveries,
                "Event received."
            );
            warp::reply::json(&json!({"status": "received", "event_id": event_id})).into_response()
        }
        Ok(Intake::Duplicate(first)) => {
            counters.events_duplicate.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                event_id = first,
                source,
                event = kind,
                "Duplicate webhook ignored: this event was received before."
            );
            warp::reply::json(&json!({"status": "duplicate", "event_id": first})).into_response()
        }
        Err(e) => {
            counters.events_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!(source, error = %e, "Event refused: it could not be stored.");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the event could not be stored; retry later",
            );
            r.headers_mut()
                .insert("retry-after", warp::http::HeaderValue::from_static("5"));
            r
        }
    }
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
