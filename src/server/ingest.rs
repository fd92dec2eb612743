//! `POST /webhooks/{source}`: parse, normalise, match, commit, answer. The `200` means the event
//! and its deliveries are on disk; it never waits on a delivery being sent.

use super::{State, error};
use crate::credentials::Credentials;
use crate::delivery::Reservation;
use crate::event::type_label;
use crate::memory::Plan;
use crate::metrics::RuleLabels;
use crate::store::memory::{Decider, Verdict};
use crate::store::{Created, Due, Intake, NewEvent, StoreError};
use crate::template::Data;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use warp::http::HeaderMap;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// Who is calling, read before the body.
pub(super) struct Caller {
    source: String,
    token: Option<String>,
    client: Option<IpAddr>,
    headers: HeaderMap,
}

/// Reads who is calling and refuses, before reading the body, a client that is rate-limited.
pub(super) async fn admit(
    source: String,
    path_token: Option<String>,
    query: String,
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    state: Arc<State>,
) -> Result<Caller, warp::Rejection> {
    let config = state.app.current();
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let client = config
        .source_auth(&source)
        .client_ip(peer.map(|p| p.ip()), forwarded);
    if let Some(wait) = client.and_then(|ip| state.limiter.refused_for(ip)) {
        let known = state
            .app
            .sources
            .get(&source)
            .map_or("unknown", |s| s.name());
        state
            .app
            .metrics
            .event(known, "unknown", "rejected", "rate_limited");
        return Err(warp::reject::custom(super::Refused::RateLimited(wait)));
    }
    let query_token = query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        Some(
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned(),
        )
    });
    Ok(Caller {
        source,
        token: path_token.or(query_token),
        client,
        headers,
    })
}

/// Receives one webhook delivery: authenticate, parse, normalise, match, commit, answer.
pub(super) async fn receive<S, B>(caller: Caller, body: S, state: Arc<State>) -> Response
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    let started = std::time::Instant::now();
    let metrics = &state.app.metrics;
    let normaliser = state.app.sources.get(&caller.source).cloned();
    let label = normaliser.as_ref().map_or("unknown", |s| s.name());
    let refuse = |status: StatusCode, message: String| {
        let reason = match status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::NOT_FOUND => "unknown_source",
            _ => "bad_request",
        };
        metrics.event(label, "unknown", "rejected", reason);
        if let Some(ip) = caller.client {
            state.limiter.penalise(ip);
        }
        tracing::warn!(source = %caller.source, client = ?caller.client, status = status.as_u16(), reason = %message, "Webhook refused.");
        record_refused(&state, caller.client, &caller.source, status, &message);
        error(status, message)
    };
    let source = caller.source.as_str();
    let Some(normaliser) = normaliser else {
        let known = state.app.sources.names();
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "unknown source {source:?}; this router receives: {}",
                known.join(", ")
            ),
        );
    };
    let announced = caller
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = match super::collect_body(announced, body).await {
        Ok(b) => b,
        Err(super::BodyError::TooLarge) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {} bytes", super::MAX_BODY_BYTES),
            );
        }
        Err(super::BodyError::Broken) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the request body could not be read".into(),
            );
        }
    };
    let config = state.app.current();
    let auth = config.source_auth(source);
    let signature = auth
        .hmac
        .as_ref()
        .and_then(|(_, header)| caller.headers.get(header.as_str()))
        .and_then(|v| v.to_str().ok());
    let credentials = Credentials {
        token: caller.token.as_deref(),
        signature,
        client: caller.client,
    };
    if let Err(e) = auth.check_request(&credentials, &body) {
        return refuse(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let payload = match parse(&body) {
        Ok(p) => p,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, message),
    };
    let secret = normaliser.body_secret(&payload);
    let sent_at = normaliser.sent_at(&payload);
    if let Err(e) = auth.check_payload(secret, sent_at, chrono::Utc::now()) {
        return refuse(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let dedup_key = normaliser.dedup_key(&payload, &body, sent_at);
    let mut event = normaliser.normalise(payload);
    let event_id = uuid::Uuid::now_v7().to_string();
    event.event_id.clone_from(&event_id);
    let (kind, sent) = (event.event.clone(), event.source_event.clone());
    let label_kind = type_label(Some(normaliser.as_ref()), &kind);
    let lead_email = event.lead.email.clone();
    let campaign_id = event.campaign.id.map(|id| id.to_string());
    // Rules and templates read the event's JSON form, built when one of them first does; the
    // store keeps its JSON text.
    let data = Data::from(event);
    let config = state.app.current();
    let plan = Plan::new(&config, &data, chrono::Utc::now(), &state.app.silences);
    let through_store = plan.through_store();
    let Plan {
        matched,
        deliveries,
        memory,
        missing,
    } = plan;
    for m in missing {
        if let Some(error) = &m.error {
            tracing::warn!(
                rule = m.rule,
                error,
                "A rule's key does not render; the event goes through undecided."
            );
        }
        let labels = RuleLabels { rule: m.rule };
        metrics.noise_key_missing.get_or_create(&labels).inc();
    }
    // Room with this instance's workers: then the deliveries start as soon as the commit is
    // done, without waiting for a claim.
    let destinations: Vec<&str> = deliveries.iter().map(|d| d.destination.as_str()).collect();
    // (An event whose deliveries or their content memory decides in the transaction, such as an
    // open whose count the router fills in, goes through the store, as does one with a delivery
    // silenced or held for its time window.)
    let room = match through_store {
        true => None,
        false => state.handoff.reserve(&destinations),
    };
    let record = NewEvent {
        id: event_id.clone(),
        source: source.to_string(),
        event_type: kind.clone(),
        lead_email,
        campaign_id,
        config_hash: config.hash.clone(),
        // About the body's size and a kilobyte of canonical fields.
        payload: data.to_json(body.len() + 1024),
        dedup_key,
        deliveries,
        memory: memory.map(|m| Arc::new(m) as Arc<dyn Decider>),
        claimed: room.is_some(),
    };
    // Committing and handing over run in a task of their own: should the client hang up while
    // the commit is under way, the request is dropped but this still completes, so deliveries
    // recorded as claimed always reach the workers (or go back to pending).
    // The answer waits for the commit at most `answer_deadline` (SmartLead gives up at 30 s):
    // past it the webhook is answered 503 and its retry finds the event stored, or not.
    // A webhook past the limit of commits waiting (a stalled store) is refused at once rather
    // than queued in memory.
    let Ok(waiting) = state.intakes.clone().try_acquire_owned() else {
        metrics.event(label, label_kind, "rejected", "store_unavailable");
        return unavailable("too many events are waiting for the store; retry later");
    };
    let archive = config.clone();
    let state_for_task = state.clone();
    let task = tokio::spawn(async move {
        let _waiting = waiting;
        // The configuration is kept in the store before the first event it matches: a delivery
        // waiting for a retry is sent with it whatever is reloaded or restarted meanwhile.
        if let Err(e) = state_for_task.app.ensure_archived(&archive).await {
            tracing::warn!(error = %e, "Cannot keep the configuration in the store.");
        }
        commit(state_for_task, record, room.map(|room| (room, data))).await
    });
    let committed = match tokio::time::timeout(state.answer_deadline, task).await {
        Ok(joined) => joined.unwrap_or_else(|e| Err(StoreError::Abandoned(e.to_string()))),
        Err(_) => Err(StoreError::Stalled(state.answer_deadline)),
    };
    match committed {
        Ok(Intake::Accepted(created)) => {
            metrics.event(label, label_kind, "accepted", "none");
            let deliveries = created.iter().filter(|c| c.is_some()).count();
            let steps = matched.iter().flat_map(|&i| &config.rules.get(i).actions);
            let mut suppressed = 0;
            for (step, c) in steps.zip(&created) {
                let (kind, destination) = (step.action.kind(), &step.destination);
                match c.as_ref().map(|c| c.verdict) {
                    Some(Verdict::Suppressed(reason)) => {
                        suppressed += 1;
                        metrics.delivery(kind, destination, "suppressed", reason);
                    }
                    Some(Verdict::Held(_)) => {
                        metrics.delivery(kind, destination, "held", "outside");
                    }
                    _ => {}
                }
            }
            // A rule matched when it has a delivery recorded (memory may have found it did not).
            let mut at = 0;
            let mut rules = 0;
            for &i in &matched {
                let rule = config.rules.get(i);
                let range = at..at + rule.actions.len();
                at = range.end;
                if created[range].iter().any(Option::is_some) {
                    rules += 1;
                    let labels = RuleLabels {
                        rule: rule.name.clone(),
                    };
                    metrics.rule_matches.get_or_create(&labels).inc();
                }
            }
            metrics.ack_latency.observe(started.elapsed().as_secs_f64());
            tracing::info!(
                event_id,
                source,
                event = kind,
                sent_as = sent.as_str(),
                rules,
                deliveries,
                suppressed,
                "Event received."
            );
            warp::reply::json(&json!({"status": "received", "event_id": event_id})).into_response()
        }
        Ok(Intake::Duplicate(first)) => {
            metrics.event(label, label_kind, "duplicate", "none");
            tracing::info!(
                event_id = first,
                source,
                event = kind,
                "Duplicate webhook ignored: this event was received before."
            );
            warp::reply::json(&json!({"status": "duplicate", "event_id": first})).into_response()
        }
        Err(e) => {
            metrics.event(label, label_kind, "rejected", "store_unavailable");
            tracing::error!(source, error = %e, "Event refused: it could not be stored.");
            unavailable("the event could not be stored; retry later")
        }
    }
}

/// What intake hands over after the commit: the room reserved and the event.
type Handover = (Reservation, Data);

/// Commits the event; if room was reserved, gives its deliveries (recorded as claimed) to the
/// workers, or back to the store as pending when the workers have stopped. Otherwise wakes the
/// workers for the pending deliveries.
async fn commit(
    state: Arc<State>,
    record: NewEvent,
    handover: Option<Handover>,
) -> Result<Intake, StoreError> {
    let event_id = record.id.clone();
    let pending = handover.is_none() && !record.deliveries.is_empty();
    let received_at = crate::store::now_ms();
    // What the workers get, but for the ids the store assigns.
    let due: Vec<Due> = match handover {
        Some(_) => record
            .deliveries
            .iter()
            .map(|d| Due {
                id: 0,
                event_id: event_id.clone(),
                rule: d.rule.clone(),
                action_index: d.action_index,
                destination: d.destination.clone(),
                attempts: 0,
                context: None,
                config_hash: record.config_hash.clone(),
                payload: String::new(),
                received_at,
            })
            .collect(),
        None => vec![],
    };
    let intake = state.committer.submit(record).await?;
    let Intake::Accepted(ids) = &intake else {
        return Ok(intake);
    };
    if pending {
        state.handoff.stored_pending();
        state.app.wake.notify_one();
    }
    if let Some((room, event)) = handover {
        // Only deliveries to send are handed over: suppressed ones are final as recorded, and
        // some may not exist (their rule did not match once memory was read). Their room is
        // given back with the reservation.
        let due: Vec<Due> = due
            .into_iter()
            .zip(ids)
            .filter_map(|(d, c)| match c {
                Some(Created {
                    id,
                    verdict: Verdict::Send,
                }) => Some(Due { id: *id, ..d }),
                _ => None,
            })
            .collect();
        if due.is_empty() {
            return Ok(intake);
        }
        if let Err(due) = state.handoff.send(due, Arc::new(event), room) {
            // The workers have stopped: the deliveries wait in the store for the next start.
            let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
            if let Err(e) = state.store.release(&ids).await {
                tracing::warn!(event_id, error = %e, "Cannot put deliveries back as pending; they resume after a restart.");
            }
        }
    }
    Ok(intake)
}

/// 503 with `Retry-After`.
fn unavailable(message: &str) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert("retry-after", warp::http::HeaderValue::from_static("5"));
    r
}

/// The body as a JSON object, or a message that says what is wrong with it.
fn parse(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty; expected a JSON object".into());
    }
    let parsed = serde_json::from_slice::<Value>(body).or_else(|e| {
        // JavaScript cuts strings mid-emoji and escapes the half as a lone surrogate
        // (`\ud83d`), which JSON parsers refuse: the event would be refused on every retry.
        // Each lone one is read as U+FFFD instead.
        match repair_lone_surrogates(body) {
            Some(repaired) => serde_json::from_slice::<Value>(&repaired).map_err(|_| e),
            None => Err(e),
        }
    });
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "the body must be a JSON object, not {}",
            kind(&other)
        )),
        Err(e) => Err(format!("the body is not valid JSON: {e}")),
    }
}

/// The body with every `\uXXXX` escape of a lone surrogate (a high one not followed by a low
/// one, or a low one alone) replaced by `\ufffd`; `None` when it has none.
fn repair_lone_surrogates(body: &[u8]) -> Option<Vec<u8>> {
    fn unit(b: &[u8], at: usize) -> Option<u16> {
        if b.get(at) != Some(&b'\\') || b.get(at + 1) != Some(&b'u') {
            return None;
        }
        let hex = std::str::from_utf8(b.get(at + 2..at + 6)?).ok()?;
        u16::from_str_radix(hex, 16).ok()
    }
    let high = |u: u16| (0xD800..0xDC00).contains(&u);
    let low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut out = Vec::with_capacity(body.len());
    let mut changed = false;
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'\\' {
            out.push(body[i]);
            i += 1;
            continue;
        }
        match unit(body, i) {
            Some(u) if high(u) && unit(body, i + 6).is_some_and(low) => {
                out.extend_from_slice(&body[i..i + 12]);
                i += 12;
            }
            Some(u) if high(u) || low(u) => {
                out.extend_from_slice(b"\\ufffd");
                changed = true;
                i += 6;
            }
            // Any other escape (`\\`, `\"`, `\u0041`) is kept whole, so that an escaped
            // backslash is never read as the start of an escape.
            _ => {
                let n = if body.get(i + 1) == Some(&b'u') { 6 } else { 2 };
                out.extend_from_slice(&body[i..(i + n).min(body.len())]);
                i += n;
            }
        }
    }
    changed.then_some(out)
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

/// Keeps a refused request (client, path, reason; never its body or a token) for the console,
/// in the background: a flood of bad requests takes at most a few store writes at a time, and
/// the rest are only logged.
fn record_refused(
    state: &Arc<State>,
    client: Option<IpAddr>,
    source: &str,
    status: StatusCode,
    reason: &str,
) {
    static WRITING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
    let Ok(permit) = WRITING.try_acquire() else {
        return;
    };
    let store = state.store.clone();
    let client = client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    // The path without a token segment or query, which may hold the source's secret.
    let path = format!("/webhooks/{}", source.chars().take(64).collect::<String>());
    let reason: String = reason.chars().take(500).collect();
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = store
            .record_refused(&client, &path, status.as_u16(), &reason)
            .await
        {
            tracing::debug!(error = %e, "A refused request could not be recorded.");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_surrogate_is_read_as_the_replacement_character() {
        let cut = br#"{"text": "cut \ud83d", "low": "\udc00x", "pair": "\ud83d\ude00", "lit": "\\ud800"}"#;
        let map = parse(cut).unwrap();
        assert_eq!(map["text"], "cut \u{fffd}");
        assert_eq!(map["low"], "\u{fffd}x");
        assert_eq!(map["pair"], "\u{1f600}");
        assert_eq!(
            map["lit"], "\\ud800",
            "an escaped backslash is not an escape"
        );
        assert!(repair_lone_surrogates(br#"{"a": "\ud83d\ude00 \\ud800"}"#).is_none());
        assert!(
            parse(br#"{"a": "\ud83d"#).is_err(),
            "still broken JSON is refused"
        );
    }
}
