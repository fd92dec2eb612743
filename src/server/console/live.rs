//! The events page's live view: Server-Sent Events fed from the store, not from this
//! instance's intake, so that every instance on one PostgreSQL shows every event. Each stream
//! polls for events newer than the last it sent, and ends when the router begins to shut down,
//! so an open page never holds up `--shutdown-grace`.

use super::{State, Viewer};
use crate::server::views::EventQuery;
use crate::store::console::Cursor;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use warp::reply::{Reply, Response};
use warp::sse::Event;

/// How often a stream asks the store for new events.
const POLL: Duration = Duration::from_millis(500);

/// One new event as the page adds it.
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    event: &'a crate::store::console::EventSummary,
    received: String,
}

/// The stream of events received from now on that pass the page's filters.
pub(super) fn stream(
    _viewer: Viewer,
    query: EventQuery,
    last_event_id: Option<String>,
    state: Arc<State>,
) -> Response {
    // The store's futures are not `Sync`, as a response body must be: a task of its own reads
    // the store and hands the events over a channel, and stops once the page is gone.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    // A reconnecting browser says where it was (`Last-Event-ID`); a page, its newest event.
    let start = last_event_id
        .or_else(|| Some(query.from.clone()))
        .and_then(|c| c.parse::<Cursor>().ok());
    tokio::spawn(feed(state, query, start, tx));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut resp = warp::sse::reply(
        warp::sse::keep_alive()
            .interval(Duration::from_secs(15))
            .stream(events),
    )
    .into_response();
    resp.headers_mut().insert(
        "cache-control",
        warp::http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// How far back each poll looks again for events committed late: an instance may commit an
/// event stamped before one that another instance committed earlier.
const OVERLAP_MS: i64 = 5_000;

/// Sends the new events that pass `query`, from `start` (or from now), until the router
/// closes or the page goes away.
async fn feed(
    state: Arc<State>,
    query: EventQuery,
    start: Option<Cursor>,
    tx: tokio::sync::mpsc::Sender<Event>,
) {
    let mut cursor = match start {
        Some(c) => c,
        None => state.store.newest_event().await.unwrap_or(Cursor {
            at: crate::store::now_ms(),
            id: String::new(),
        }),
    };
    // What was sent within the overlap, so that reading it again sends nothing twice.
    let mut sent: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    // Those up to the start were shown already (or are older than the view).
    if let Ok(shown) = state
        .store
        .events_received_since(cursor.at - OVERLAP_MS, 200)
        .await
    {
        for e in shown {
            if (e.received_at, e.id.as_str()) <= (cursor.at, cursor.id.as_str()) {
                sent.insert(e.id, e.received_at);
            }
        }
    }
    loop {
        tokio::select! {
            _ = state.closing.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let Ok(mut fresh) = state.store.events_since(&cursor, 100).await else {
            continue;
        };
        if let Ok(late) = state
            .store
            .events_received_since(cursor.at - OVERLAP_MS, 200)
            .await
        {
            let before = |e: &crate::store::console::EventSummary| {
                (e.received_at, e.id.as_str()) <= (cursor.at, cursor.id.as_str())
            };
            fresh.extend(
                late.into_iter()
                    .filter(|e| before(e) && !sent.contains_key(&e.id)),
            );
        }
        fresh.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        fresh.dedup_by(|a, b| a.id == b.id);
        for e in &fresh {
            if (e.received_at, e.id.as_str()) > (cursor.at, cursor.id.as_str()) {
                cursor = Cursor {
                    at: e.received_at,
                    id: e.id.clone(),
                };
            }
        }
        sent.retain(|_, at| *at >= cursor.at - OVERLAP_MS);
        for e in fresh {
            if sent.insert(e.id.clone(), e.received_at).is_some() || !query.admits(&e) {
                continue;
            }
            let line = Line {
                event: &e,
                received: chrono::DateTime::from_timestamp_millis(e.received_at)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
            };
            let Ok(event) = Event::default().event("event").json_data(&line) else {
                continue;
            };
            let id = Cursor {
                at: e.received_at,
                id: e.id.clone(),
            };
            if tx.send(event.id(id.to_string())).await.is_err() {
                return;
            }
        }
    }
}
