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
pub(super) fn stream(_viewer: Viewer, query: EventQuery, state: Arc<State>) -> Response {
    // The store's futures are not `Sync`, as a response body must be: a task of its own reads
    // the store and hands the events over a channel, and stops once the page is gone.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(feed(state, query, tx));
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

/// Sends the new events that pass `query` until the router closes or the page goes away.
async fn feed(state: Arc<State>, query: EventQuery, tx: tokio::sync::mpsc::Sender<Event>) {
    let mut cursor = state.store.newest_event().await.unwrap_or(Cursor {
        at: crate::store::now_ms(),
        id: String::new(),
    });
    loop {
        tokio::select! {
            _ = state.closing.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let Ok(fresh) = state.store.events_since(&cursor, 100).await else {
            continue;
        };
        if let Some(last) = fresh.last() {
            cursor = Cursor {
                at: last.received_at,
                id: last.id.clone(),
            };
        }
        for e in fresh.iter().filter(|e| query.admits(e)) {
            let line = Line {
                event: e,
                received: chrono::DateTime::from_timestamp_millis(e.received_at)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
            };
            let Ok(event) = Event::default().event("event").json_data(&line) else {
                continue;
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}
