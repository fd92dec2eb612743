//! Operator endpoints: `/readyz`, `/metrics`, `POST /-/reload`, `/api/status`.

use super::{State, error};
use crate::app::short_hash;
use serde_json::json;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// Ready when a configuration is loaded (always, once serving) and the store answers.
pub(super) async fn ready(state: State) -> Response {
    let rules = state.app.current().rules.rules().len();
    match state.store.counts().await {
        Ok(counts) => {
            warp::reply::json(&json!({"status": "ready", "rules": rules, "pending": counts.pending})).into_response()
        }
        Err(e) => warp::reply::with_status(
            warp::reply::json(&json!({"status": "not ready", "reason": format!("the store does not answer: {e}")})),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response(),
    }
}

/// Prometheus text format.
pub(super) async fn metrics(state: State) -> Response {
    let c = &state.app.counters;
    let config = state.app.current();
    let status = state.app.reload_status();
    let counts = state.store.counts().await.unwrap_or_default();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    metric(
        "switchboard_events_accepted_total",
        "counter",
        "Webhook events accepted.",
        n(&c.events_accepted),
    );
    metric(
        "switchboard_events_duplicate_total",
        "counter",
        "Webhook deliveries recognised as repeats.",
        n(&c.events_duplicate),
    );
    metric(
        "switchboard_events_rejected_total",
        "counter",
        "Webhook requests rejected.",
        n(&c.events_rejected),
    );
    metric(
        "switchboard_deliveries_delivered_total",
        "counter",
        "Deliveries that reached their destination.",
        n(&c.deliveries_ok),
    );
    metric(
        "switchboard_deliveries_retried_total",
        "counter",
        "Attempts that failed and will be retried.",
        n(&c.deliveries_retried),
    );
    metric(
        "switchboard_deliveries_failed_total",
        "counter",
        "Deliveries that became dead letters.",
        n(&c.deliveries_failed),
    );
    metric(
        "switchboard_deliveries_skipped_total",
        "counter",
        "Deliveries skipped: destination not configured.",
        n(&c.deliveries_skipped),
    );
    metric(
        "switchboard_deliveries_pending",
        "gauge",
        "Deliveries waiting to be sent, retries included.",
        counts.pending.to_string(),
    );
    metric(
        "switchboard_dead_letters",
        "gauge",
        "Dead letters in the store.",
        counts.dead.to_string(),
    );
    metric(
        "switchboard_rules_loaded",
        "gauge",
        "Rules in the serving configuration.",
        config.rules.rules().len().to_string(),
    );
    metric(
        "switchboard_config_last_reload_successful",
        "gauge",
        "Whether the last reload succeeded.",
        u8::from(status.ok).to_string(),
    );
    metric(
        "switchboard_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful reload.",
        n(&c.last_success_unix),
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_config_info The serving configuration's hash.\n# TYPE switchboard_config_info gauge\nswitchboard_config_info{{hash=\"{}\"}} 1",
        short_hash(&config.hash)
    );
    warp::reply::with_header(out, "content-type", "text/plain; version=0.0.4").into_response()
}

/// Reloads now: 200 with a summary, or 422 with every error (the old rules keep serving).
pub(super) async fn reload(state: State) -> Response {
    let app = state.app.clone();
    let result = tokio::task::spawn_blocking(move || app.reload("POST /-/reload")).await;
    match result {
        Ok(Ok(config)) => warp::reply::json(&json!({
            "status": "reloaded",
            "rules_loaded": config.rules.rules().len(),
            "config_hash": config.hash,
            "warnings": config.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(Err(errors)) => warp::reply::with_status(
            warp::reply::json(&json!({
                "status": "failed",
                "message": "the configuration has errors; the previous rules keep serving",
                "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload did not finish: {e}"),
        ),
    }
}

/// `/api/status`: configuration, last reload, and delivery counts.
pub(super) async fn status(state: State) -> Response {
    let mut v = state.app.status_json();
    v["deliveries"] = match state.store.counts().await {
        Ok(c) => json!(c),
        Err(e) => json!({"error": e.to_string()}),
    };
    warp::reply::json(&v).into_response()
}
