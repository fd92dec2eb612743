//! `/api/silences`: list, add and expire silences over HTTP, the same operations as
//! `switchboard silence`.

use super::{State, error};
use crate::silence::{Matcher, NewSilence, Silence, SilenceView};
use crate::store::now_ms;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use warp::Filter as _;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// The body of `POST /api/silences`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Add {
    /// `field=value`, each.
    matchers: Vec<String>,
    rule: Option<String>,
    /// How long (`7d`).
    #[serde(rename = "for")]
    duration: String,
    #[serde(default)]
    comment: String,
}

/// Query parameters of `GET /api/silences`.
#[derive(Debug, Deserialize)]
struct Query {
    /// Ended ones too.
    #[serde(default)]
    all: bool,
}

/// The `/api/silences` routes.
pub(super) fn routes(
    with_state: impl warp::Filter<Extract = (Arc<State>,), Error = Infallible>
    + Clone
    + Send
    + Sync
    + 'static,
) -> impl warp::Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let list = warp::get()
        .and(warp::path!("silences"))
        .and(warp::query::<Query>())
        .and(with_state.clone())
        .then(|q: Query, s: Arc<State>| async move {
            let now = now_ms();
            match s.store.silences(if q.all { 0 } else { now }).await {
                Ok(rows) => {
                    let views: Vec<_> = rows
                        .into_iter()
                        .filter_map(Silence::from_row)
                        .map(|s| s.view(now))
                        .collect();
                    warp::reply::json(&json!({ "silences": views })).into_response()
                }
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        });
    let add = warp::post()
        .and(warp::path!("silences"))
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .then(|body: bytes::Bytes, s: Arc<State>| add_route(s, body));
    let expire = warp::delete()
        .and(warp::path!("silences" / String))
        .and(with_state)
        .then(|id: String, s: Arc<State>| async move {
            match expire(&s, &id).await {
                Ok(()) => warp::reply::json(&json!({ "expired": id })).into_response(),
                Err((status, message)) => error(status, message),
            }
        });
    list.or(add).unify().or(expire).unify()
}

/// Parses what `POST /api/silences` asks for: matchers, rule, duration.
fn parse(body: &[u8]) -> Result<NewSilence, String> {
    let add: Add = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body is not a silence ({{\"matchers\": [\"lead.email=bob@acme.example\"], \"for\": \"7d\", \"rule\": …, \"comment\": …}}): {e}"
        )
    })?;
    let matchers = add
        .matchers
        .iter()
        .map(|m| Matcher::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let duration = humantime::parse_duration(add.duration.trim())
        .map_err(|_| format!("`for` {:?} is not a duration like 2h or 7d", add.duration))?;
    Ok(NewSilence {
        matchers,
        rule: add.rule.filter(|r| !r.trim().is_empty()),
        duration,
        comment: add.comment,
    })
}

async fn add_route(s: Arc<State>, body: bytes::Bytes) -> Response {
    let silence = match parse(&body).and_then(NewSilence::start) {
        Ok(silence) => silence,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match add(&s, silence).await {
        Ok(view) => {
            warp::reply::with_status(warp::reply::json(&view), StatusCode::CREATED).into_response()
        }
        Err((status, message)) => error(status, message),
    }
}

/// Adds a silence (the API's and the console's): its rule must be loaded.
pub(super) async fn add(s: &State, silence: Silence) -> Result<SilenceView, (StatusCode, String)> {
    if let Some(rule) = &silence.rule
        && s.app.current().rules.by_name(rule).is_none()
    {
        let message = format!("no rule named {rule:?} in the rules loaded");
        return Err((StatusCode::BAD_REQUEST, message));
    }
    match s.store.add_silence(&silence.to_row()).await {
        Ok(()) => {
            refresh(s).await;
            tracing::info!(silence = silence.id, "Silence added.");
            Ok(silence.view(now_ms()))
        }
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// Ends a silence in force now (the API's and the console's).
pub(super) async fn expire(s: &State, id: &str) -> Result<(), (StatusCode, String)> {
    match s.store.expire_silence(id, now_ms()).await {
        Ok(true) => {
            refresh(s).await;
            Ok(())
        }
        Ok(false) => Err((
            StatusCode::NOT_FOUND,
            format!("no silence in force with id {id}"),
        )),
        Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// A change made here applies here at once (other instances read it within a second).
async fn refresh(s: &State) {
    if let Err(e) = s.app.silences.refresh(&s.store).await {
        tracing::warn!(error = %e, "Cannot read the silences back; they apply within a second.");
    }
}
