//! One attempt at a delivery: render with the configuration that matched its event, send,
//! decide what comes next (delivered, retry at a time, dead letter, skipped), count and log it,
//! and record it in the store.

use super::RetryPolicy;
use super::dispatch::{Busy, Dispatcher};
use crate::actions::Clients;
use crate::app::App;
use crate::metrics::ActionLabels;
use crate::store::{Attempt, Due, Finished, Next, StoreError, Timing, now_ms};
use crate::template::Data;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one attempt came to.
struct AttemptOutcome {
    next: Next,
    error: Option<String>,
    status: Option<u16>,
    /// The metric reason (`none` when delivered).
    reason: &'static str,
    /// The action's kind, when the rule still exists.
    kind: &'static str,
}

/// Renders and sends one delivery, frees its worker and destination slot (`busy`), then
/// records the attempt and what comes next.
pub(super) async fn deliver(d: &Dispatcher, due: &Due, event: Option<Arc<Data>>, busy: Busy) {
    let (app, recorder) = (&*d.app, &d.committer);
    let started_at = now_ms();
    let clock = Instant::now();
    let attempt_no = due.attempts + 1;
    let o = attempt(app, &d.clients, &d.settings.retry, due, event).await;
    drop(busy);
    let (event_id, rule, action, destination) = (
        &due.event_id,
        &due.rule,
        due.action_index + 1,
        &due.destination,
    );
    let reason = o.error.as_deref().unwrap_or("");
    let m = &app.metrics;
    match &o.next {
        Next::Delivered => {
            m.delivery(o.kind, destination, "delivered", "none");
            let waited = (now_ms() - due.received_at).max(0) as f64 / 1000.0;
            m.delivery_latency
                .get_or_create(&ActionLabels { action: o.kind })
                .observe(waited);
            tracing::info!(
                event_id,
                rule,
                action,
                destination,
                attempt = attempt_no,
                "Delivered."
            );
        }
        Next::Retry(at) => {
            m.delivery(o.kind, destination, "retried", o.reason);
            let retry_in_ms = at - now_ms();
            tracing::warn!(
                event_id,
                rule,
                action,
                destination,
                attempt = attempt_no,
                retry_in_ms,
                reason,
                "Delivery failed; will retry."
            );
        }
        Next::Dead => {
            m.delivery(o.kind, destination, "dead", o.reason);
            tracing::error!(
                event_id,
                rule,
                action,
                destination,
                attempt = attempt_no,
                delivery_id = due.id,
                reason,
                "Delivery failed for good; kept as a dead letter (switchboard dlq list)."
            );
        }
        Next::Skipped => {
            m.delivery(o.kind, destination, "skipped", o.reason);
            tracing::info!(
                event_id,
                rule,
                action,
                destination,
                "Delivery skipped: {reason}."
            );
        }
        Next::Hold(_) => {
            m.delivery(o.kind, destination, "held", o.reason);
            tracing::info!(
                event_id,
                rule,
                action,
                destination,
                "Delivery held: {reason}."
            );
        }
        Next::Suppressed(why) => {
            m.delivery(o.kind, destination, "suppressed", why);
            tracing::info!(
                event_id,
                rule,
                action,
                destination,
                "Delivery suppressed: {reason}."
            );
        }
    }
    let attempt = Attempt {
        started_at,
        duration_ms: clock.elapsed().as_millis() as i64,
        status_code: o.status,
        error: o.error,
    };
    let finished = Finished {
        id: due.id,
        attempt,
        next: o.next,
    };
    // The outcome is known: a failed write (its batch may have failed for another row's sake)
    // is tried again rather than leaving the delivery `sending`.
    for (n, wait) in RECORD_RETRIES.iter().enumerate() {
        match recorder.record(finished.clone()).await {
            Ok(()) => return,
            Err(StoreError::Closed) => break,
            Err(e) if n + 1 < RECORD_RETRIES.len() => {
                tracing::warn!(event_id, rule, delivery_id = due.id, error = %e, "Cannot record a delivery attempt; trying again.");
                tokio::time::sleep(*wait).await;
            }
            Err(_) => break,
        }
    }
    tracing::error!(
        event_id,
        rule,
        delivery_id = due.id,
        "Cannot record a delivery attempt; the delivery is taken up again once its lease (--lease) lapses."
    );
}

/// Waits between tries to record an attempt (the last entry is not waited).
const RECORD_RETRIES: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::ZERO,
];

/// One attempt: render and send, and decide what comes next.
async fn attempt(
    app: &App,
    clients: &Clients,
    policy: &RetryPolicy,
    due: &Due,
    event: Option<Arc<Data>>,
) -> AttemptOutcome {
    let fail = |next, error: String, reason, kind| AttemptOutcome {
        next,
        error: Some(error),
        status: None,
        reason,
        kind,
    };
    let config = app.config_matched(&due.config_hash).await;
    let Some(step) = config
        .rules
        .by_name(&due.rule)
        .and_then(|r| r.actions.get(due.action_index as usize))
    else {
        let error = format!(
            "rule {:?} action {} is no longer in the configuration",
            due.rule,
            due.action_index + 1
        );
        return fail(Next::Dead, error, "rule_removed", "unknown");
    };
    let kind = step.action.kind();
    let event: Arc<Data> = match event {
        Some(event) => event,
        None => match serde_json::from_str::<Value>(&due.payload) {
            Ok(mut v) => {
                // What rule memory added for this delivery (`noise.suppressed`, …).
                if let Some(context) = due.context.as_deref()
                    && let Ok(context) = serde_json::from_str::<Value>(context)
                {
                    crate::event::merge(&mut v, context);
                }
                Arc::new(Data::from(v))
            }
            Err(e) => {
                return fail(
                    Next::Dead,
                    format!("the stored event is not valid JSON: {e}"),
                    "bad_event",
                    kind,
                );
            }
        },
    };
    // Checked again when it comes due: a silence added since, or a time window moved by a
    // reload, applies. A digest's event is only its last: silences were applied to each of its
    // events as they came, and one lead's silence does not hold back the others'.
    let digest = event.value()["digest"].is_object();
    if !digest && let Some(id) = app.silences.matching(event.value(), &due.rule) {
        let error = format!("silenced by silence {id}");
        return fail(Next::Suppressed("silenced"), error, "silenced", kind);
    }
    // The time window as configured now (a reload may have changed it), else as matched.
    let current = app.current();
    let now_step = current
        .rules
        .by_name(&due.rule)
        .and_then(|rule| rule.actions.get(due.action_index as usize));
    let active = now_step.unwrap_or(step).active.clone();
    if let Some(active) = active {
        let now = chrono::Utc::now();
        let window = &active.window.name;
        match active.timing(now) {
            Timing::Now => {}
            Timing::Hold(at) | Timing::Digest(at) => {
                let opens = chrono::DateTime::from_timestamp_millis(at).unwrap_or(now);
                let error = format!("outside time window {window:?}, held until {opens}");
                return fail(Next::Hold(at), error, "outside", kind);
            }
            Timing::Drop => {
                let error = format!("outside time window {window:?} (outside: drop)");
                return fail(Next::Suppressed("outside"), error, "outside", kind);
            }
        }
    }
    if let Some(vars) = step.action.unconfigured() {
        return fail(
            Next::Skipped,
            format!("its destination is not configured; set {vars} to enable it"),
            "unconfigured",
            kind,
        );
    }
    let message = match step.action.render_data(&event, &config.templates) {
        Ok(m) => m,
        Err(e) => {
            return fail(
                Next::Dead,
                format!("the message could not be rendered: {e}"),
                "render",
                kind,
            );
        }
    };
    match message.send(clients).await {
        Ok(()) => AttemptOutcome {
            next: Next::Delivered,
            error: None,
            status: None,
            reason: "none",
            kind,
        },
        Err(e) => {
            let next = match e
                .retryable
                .then(|| policy.next_delay(due.attempts + 1, e.retry_after))
                .flatten()
            {
                Some(delay) => Next::Retry(now_ms() + delay.as_millis() as i64),
                None => Next::Dead,
            };
            AttemptOutcome {
                next,
                status: e.status,
                reason: e.reason(),
                error: Some(e.message),
                kind,
            }
        }
    }
}
