//! The bare warp baseline for `bench/run.sh`: `bare_warp 127.0.0.1:PORT`.
//!
//! A warp 0.4 server with the router's intake shape and none of its work: `POST
//! /webhooks/smartlead` reads the body (up to 1 MiB, as the router does), parses it as JSON and
//! answers `200 {"status":"received"}` (`400` for a body that is not JSON). `GET /healthz`
//! answers `ok` so the script can wait for it. Nothing is stored, matched or delivered: this is
//! the ceiling the durable router's acknowledgement throughput is compared with.

use serde_json::{Value, json};
use std::net::SocketAddr;
use warp::Filter;

#[tokio::main]
async fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(addr)) => addr,
        _ => {
            eprintln!("usage: bare_warp 127.0.0.1:PORT");
            std::process::exit(2);
        }
    };
    let webhook = warp::post()
        .and(warp::path!("webhooks" / "smartlead"))
        .and(warp::body::content_length_limit(1024 * 1024))
        .and(warp::body::bytes())
        .map(
            |body: bytes::Bytes| match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(_)) => warp::reply::with_status(
                    warp::reply::json(&json!({"status": "received"})),
                    warp::http::StatusCode::OK,
                ),
                _ => warp::reply::with_status(
                    warp::reply::json(&json!({"error": "the body is not a JSON object"})),
                    warp::http::StatusCode::BAD_REQUEST,
                ),
            },
        );
    let healthz = warp::get().and(warp::path!("healthz")).map(|| "ok");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    eprintln!("bare_warp listening on http://{addr}");
    warp::serve(webhook.or(healthz))
        .incoming(listener)
        .run()
        .await;
}
