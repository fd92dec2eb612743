//! The accept loop: warp's routes served over hyper with the limits a public listener needs.
//! A connection must send its request headers within the header deadline (it is closed when
//! idle that long between requests too, or when it drips them), every request is answered
//! within the request deadline, and connections are capped in all and per client address, so
//! that idle or slow clients can neither exhaust the file descriptors nor crowd out SmartLead.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::http::{Response, StatusCode};

/// How long shutdown waits for the connections' requests under way.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// The limits of the listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_per_client: usize,
    /// How long a connection may take to send a request's headers, or stay idle between
    /// requests.
    pub header_deadline: Duration,
    /// How long a request may take to be answered (its body included).
    pub request_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            max_per_client: 100,
            header_deadline: Duration::from_secs(30),
            request_deadline: Duration::from_secs(30),
        }
    }
}

/// The client's address as the connection came (the webhook route resolves trusted proxies
/// from it).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Connections open, in all and per client address.
#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// A connection's place among the open ones, given back when it closes.
struct Place {
    open: Arc<Mutex<Open>>,
    client: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("open connections lock");
        open.total -= 1;
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

/// The address a client's share is counted by: an IPv4 address, or an IPv6 /64 (one host
/// commonly holds a whole /64).
fn share_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A place for a new connection from `client`, if the limits leave one.
fn admit(open: &Arc<Mutex<Open>>, limits: &Limits, client: IpAddr) -> Option<Place> {
    let client = share_key(client);
    let mut o = open.lock().expect("open connections lock");
    let mine = o.per_client.get(&client).copied().unwrap_or(0);
    if o.total >= limits.max_connections || mine >= limits.max_per_client {
        return None;
    }
    o.total += 1;
    *o.per_client.entry(client).or_insert(0) += 1;
    Some(Place {
        open: open.clone(),
        client,
    })
}

/// Serves `filter` on `listener` until `shutdown` resolves, then stops accepting and lets the
/// connections finish their requests.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    filter: F,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    F: warp::Filter<Extract = (warp::reply::Response,), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let service = warp::service(filter);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(Mutex::new(Open::default()));
    let mut refused_logged = std::time::Instant::now() - Duration::from_secs(60);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors (or another transient failure): wait a moment
                    // rather than spin.
                    tracing::warn!(error = %e, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(place) = admit(&open, &limits, peer.ip()) else {
            if refused_logged.elapsed() > Duration::from_secs(10) {
                refused_logged = std::time::Instant::now();
                tracing::warn!(client = %peer.ip(), "Connection refused: too many open connections (--max-connections, --max-connections-per-client).");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let deadline = limits.request_deadline;
        let handler = hyper::service::service_fn(move |mut request| {
            request.extensions_mut().insert(Peer(peer));
            let mut service = service.clone();
            async move {
                let answer = tower_service::Service::call(&mut service, request);
                match tokio::time::timeout(deadline, answer).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        tracing::warn!(client = %peer.ip(), "A request was not answered within its deadline; answered 503.");
                        Ok::<_, Infallible>(too_slow(deadline))
                    }
                }
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_deadline)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), handler);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _place = place;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    // Requests under way finish; a connection still open after this (a client that never
    // reads its answer) is left to be closed with the process.
    if tokio::time::timeout(SHUTDOWN_WAIT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("Connections still open after {SHUTDOWN_WAIT:?}; not waiting for them.");
    }
}

/// 503 for a request not answered within its deadline.
fn too_slow(deadline: Duration) -> warp::reply::Response {
    let body = serde_json::json!({
        "error": format!("no answer within {} s; retry later", deadline.as_secs())
    });
    let mut response = Response::new(body.to_string().into());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/json"),
    );
    headers.insert("retry-after", warp::http::HeaderValue::from_static("5"));
    response
}
