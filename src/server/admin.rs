//! Operator endpoints: `/readyz`, `/metrics`, `POST /-/reload`, `/api/status`.

use super::{State, error};
use crate::app::short_hash;
use serde_json::json;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// Ready when a configuration is loaded (always, once serving) and the queue has room.
pub(super) fn ready(state: State) -> Response {
    let rules = state.app.current().rules.rules().len();
    warp::reply::json(
        &json!({"status": "ready", "rules": rules, "queue_depth": state.queue.depth()}),
    )
    .into_response()
}

/// Prometheus text format.
pub(super) fn metrics(state: State) -> Response {
    let c = &state.app.counters;
    let config = state.app.current();
    let status = state.app.reload_status();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "switchboard_events_accepted_total",
        "counter",
        "Webhook events accepted.",
        c.events_accepted.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "switchboard_events_rejected_total",
        "counter",
        "Webhook requests rejected.",
        c.events_rejected.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "switchboard_deliveries_delivered_total",
        "counter",
        "Deliveries that reached their destination.",
        c.deliveries_ok.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "switchboard_deliveries_failed_total",
        "counter",
        "Deliveries that failed.",
        c.deliveries_failed.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "switchboard_deliveries_skipped_total",
        "counter",
        "Deliveries skipped: destination not configured.",
        c.deliveries_skipped.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "switchboard_queue_depth",
        "gauge",
        "Accepted events waiting for a worker.",
        state.queue.depth().to_string(),
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
        c.last_success_unix.load(Ordering::Relaxed).to_string(),
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

/// `/api/status`.
pub(super) fn status(state: State) -> Response {
    let mut v = state.app.status_json();
    v["queue_depth"] = json!(state.queue.depth());
    warp::reply::json(&v).into_response()
}
