//! Operator endpoints: `/readyz`, `/metrics`, `POST /-/reload`, `/api/status`.

use super::{State, error};
use crate::app::App;
use crate::metrics::Sample;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// Ready when a configuration is loaded (always, once serving), the store answers and the
/// backlog is under `--ready-max-pending`; otherwise 503 with the reason. The counts are at
/// most the probe interval old (see [`super::ProbeCounts`]).
pub(super) async fn ready(state: Arc<State>) -> Response {
    let rules = state.app.current().rules.rules().len();
    let not_ready = |reason: String| {
        warp::reply::with_status(
            warp::reply::json(&json!({"status": "not ready", "reason": reason})),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response()
    };
    // Whether writes succeed comes first: a store that answers reads may refuse writes (full,
    // read-only, locked).
    if let Err(why) = state.committer.health(state.answer_deadline) {
        return not_ready(why);
    }
    match state.probes.get(|| state.store.counts()).await {
        Ok(c) if c.pending > state.ready_max_pending => not_ready(format!(
            "{} deliveries are pending, more than --ready-max-pending {}",
            c.pending, state.ready_max_pending
        )),
        Ok(c) => {
            warp::reply::json(&json!({"status": "ready", "rules": rules, "pending": c.pending}))
                .into_response()
        }
        Err(e) => not_ready(format!("the store does not answer: {e}")),
    }
}

/// Metrics in the OpenMetrics text format (Prometheus scrapes it).
pub(super) async fn metrics(state: Arc<State>) -> Response {
    let config = state.app.current();
    let status = state.app.reload_status();
    let counts = state
        .probes
        .get(|| state.store.counts())
        .await
        .unwrap_or_default();
    let oldest = counts.oldest_pending_ms.map_or(0.0, |t| {
        ((crate::store::now_ms() - t).max(0) as f64) / 1000.0
    });
    let text = state.app.metrics.render(&Sample {
        pending: counts.pending,
        oldest_pending_age: oldest,
        dead_letters: counts.dead,
        reload_ok: status.ok,
        reload_success_time: state.app.last_success_unix.load(Ordering::Relaxed),
        config_hash: &config.hash,
    });
    warp::reply::with_header(
        text,
        "content-type",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    .into_response()
}

/// Reloads now: 200 with a summary, or 422 with every error (the old rules keep serving).
pub(super) async fn reload(state: Arc<State>) -> Response {
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
pub(super) async fn status(state: Arc<State>) -> Response {
    let mut v = status_json(&state.app);
    v["deliveries"] = match state.store.counts().await {
        Ok(c) => json!(c),
        Err(e) => json!({"error": e.to_string()}),
    };
    let alive_since = crate::store::now_ms() - 60_000;
    v["instances"] = match state.store.instances(alive_since).await {
        Ok(list) => json!(list),
        Err(e) => json!({"error": e.to_string()}),
    };
    warp::reply::json(&v).into_response()
}

/// What is loaded and how the last reload went.
fn status_json(app: &App) -> Value {
    let config = app.current();
    let rules = config.rules.rules();
    json!({
        "rules_loaded": rules.len(),
        "rules_enabled": rules.iter().filter(|r| r.enabled).count(),
        "rules": rules.iter().map(|r| json!({
            "name": r.name,
            "enabled": r.enabled,
            "file": &*r.origin.0,
            "line": r.origin.1,
            "actions": r.actions.iter().map(|a| a.action.kind()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "config_hash": config.hash,
        "loaded_at": config.loaded_at,
        "files": config.files,
        "warnings": config.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "last_reload": reload_status_json(app),
    })
}

fn reload_status_json(app: &App) -> Value {
    let s = app.reload_status();
    json!({
        "ok": s.ok,
        "at": s.at,
        "trigger": s.trigger,
        "errors": s.errors.iter().map(|d| json!({
            "file": d.file,
            "line": d.line,
            "column": d.column,
            "message": d.message,
            "text": d.to_string(),
        })).collect::<Vec<_>>(),
    })
}
