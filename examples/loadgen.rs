//! Load generator and Slack stand-in for `bench/run.sh`: one small program, so that the time a
//! request is sent and the time its notification arrives are read from the same clock.
//!
//! - `closed`: N connections, each sending its next request when the previous one is answered,
//!   for D seconds (after a warm-up second that is not measured); acknowledgement throughput and
//!   p50/p99 latency. With `--sink`, it also serves the sink and waits for the notifications of
//!   every accepted event (bounded): events/s delivered at saturation. With `--reload-url`, it
//!   posts reloads while the load runs and keeps the load going until they are done, so every
//!   failed request during a reload is counted.
//! - `open`: R requests per second on a fixed schedule, whatever the answers; latency is counted
//!   from the scheduled time (no coordinated omission), acknowledgement and POST to sink.
//! - `sink`: only the sink (for a run driven by `wrk`), until idle.
//! - `rules`, `wrk-script`, `free-ports`, `wait`: helpers for the script.
//! - `report`: reads the JSON lines of a run and prints the table, with the targets.
//!
//! The sink answers every POST `200 ok`, as a Slack incoming webhook does, and records the
//! arrival of each body whose top-level `event_id` it has not seen. Every request is a distinct
//! EMAIL_REPLY payload (the fixture with its own `stats_id`), so none is a duplicate. Every
//! result is one JSON line on stdout. All traffic is on 127.0.0.1; every loop is bounded.

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use warp::Filter;

#[path = "../benches/support/rulegen.rs"]
mod rulegen;

/// The payload every request is made from unless `--body` names another: the EMAIL_REPLIED
/// sample of SmartLead's documentation (about 600 bytes once compact, with the marks below).
const FIXTURE: &str = include_str!("../tests/fixtures/smartlead/docs_04_email_replied.json");
/// The event's time fields a body may carry (the one fields a fixture has are stamped).
const TIME_FIELDS: &[&str] = &["event_timestamp", "time_replied", "timestamp"];
/// Stands in for the `stats_id` in the serialised fixture.
const MARK: &str = "@@STATS_ID@@";
/// Stands in for the event's times (`event_timestamp`, `time_replied`, `timestamp`): the time
/// of sending, as SmartLead posts an event as it happens.
const TIME_MARK: &str = "@@EVENT_TIME@@";
/// Most arrivals the sink records (beyond, it only counts).
const MAX_ARRIVALS: usize = 5_000_000;
/// Longest wait for one request (connect included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(about = "Load generator and HTTP sink for bench/run.sh (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed loop: N connections for D seconds.
    Closed(Closed),
    /// Open loop: R requests per second for D seconds.
    Open(Open),
    /// The sustained capacity: open loops at rates found by bisection, each for `--duration`
    /// seconds; the highest rate at which every event is delivered and POST to arrival p99
    /// stays within `--p99-ms`.
    Capacity(Capacity),
    /// A fixed number of requests over N connections, each sent once (delivered to the sink,
    /// with `--sink`): for instruction counts under callgrind, where time means nothing.
    Count(Count),
    /// Only the sink, until it has been idle for `--idle` seconds after its first arrival.
    Sink {
        /// Where the sink listens.
        #[arg(long)]
        sink: SocketAddr,
        /// Name of the run in the output.
        #[arg(long, default_value = "sink")]
        label: String,
        /// Stop after this many seconds without an arrival (once one arrived).
        #[arg(long, default_value_t = 3)]
        idle: u64,
        /// Stop after this many seconds in any case.
        #[arg(long, default_value_t = 300)]
        max: u64,
    },
    /// Prints a generated rules file (the mix of `benches/support/rulegen.rs`).
    Rules {
        /// How many rules.
        #[arg(long)]
        count: usize,
        /// Base URL of the sink the generated destinations post to.
        #[arg(long)]
        sink: String,
    },
    /// Prints a wrk Lua script that posts distinct EMAIL_REPLY bodies and ends with a JSON line.
    WrkScript {
        /// Name of the run in the output.
        #[arg(long)]
        label: String,
        /// The connection count wrk is run with (reported only).
        #[arg(long)]
        connections: usize,
        /// The SmartLead payload (JSON file) every request is made from.
        #[arg(long)]
        body: Option<PathBuf>,
    },
    /// Prints free loopback ports, one a line.
    FreePorts {
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Waits until GET `url` answers 200 (exit 1 after the timeout).
    Wait {
        /// The URL to poll.
        #[arg(long)]
        url: String,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Prints the results table from a run's JSON lines; exit 1 when a target is missed.
    Report {
        /// The JSON lines written by the runs.
        #[arg(long)]
        results: PathBuf,
        /// `cargo bench --bench match_render -- --output-format bencher` output.
        #[arg(long)]
        criterion: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct Target {
    /// The URL posted to (`http://127.0.0.1:PORT/webhooks/smartlead`). Repeat the flag to
    /// spread the load over several routers: connections (closed loops) or requests (open
    /// loops) take the URLs in turn.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Name of the run in the output.
    #[arg(long)]
    label: String,
    /// Serve the sink here and measure POST to arrival.
    #[arg(long)]
    sink: Option<SocketAddr>,
    /// Seconds to wait at most, after the load, for the notifications of accepted events.
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
    /// The SmartLead payload (JSON file) every request is made from; by default the
    /// documentation's EMAIL_REPLIED sample.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Payloads the requests cycle through instead (repeat the flag; a file given twice is sent
    /// twice as often).
    #[arg(long = "mix", conflicts_with = "body")]
    mix: Vec<PathBuf>,
}

impl Target {
    /// The URL of connection or request `n`.
    fn url(&self, n: usize) -> String {
        self.urls[n % self.urls.len()].clone()
    }
}

#[derive(Args)]
struct Closed {
    #[command(flatten)]
    target: Target,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// POST this URL (`…/-/reload`) while the load runs.
    #[arg(long)]
    reload_url: Option<String>,
    /// How many reloads, one after the other.
    #[arg(long, default_value_t = 3)]
    reload_times: usize,
    /// Seconds of load before the first reload.
    #[arg(long, default_value_t = 5)]
    reload_after: u64,
    /// Before each reload, edit one rule of this generated rules file (the middle one gets
    /// another name), as a user saving a change would: the reload compiles a file that differs.
    #[arg(long)]
    reload_edit: Option<std::path::PathBuf>,
    /// The server's process id: its CPU time over the measured window is reported per
    /// acknowledged request (from /proc), with the load generator's own and how busy the
    /// machine was. Work still queued when the window closes (a delivery backlog) is not in it.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct Open {
    #[command(flatten)]
    target: Target,
    /// Requests per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Requests in flight at most; a request due beyond is not sent and counted as dropped.
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
}

#[derive(Args)]
struct Capacity {
    #[command(flatten)]
    open: Open,
    /// The highest rate tried (the bisection's upper end; the lower end is 0).
    #[arg(long)]
    max_rate: f64,
    /// How many rates are tried.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// POST to arrival p99 a rate must stay within, in ms.
    #[arg(long, default_value_t = 100.0)]
    p99_ms: f64,
    /// A PostgreSQL database the routers share: `VACUUM ANALYZE` runs on it before each rate,
    /// as autovacuum would between them, so that a rate is not judged on the dead rows of the
    /// ones before it (a server with autovacuum off keeps them all).
    #[arg(long)]
    vacuum: Option<String>,
}

#[derive(Args)]
struct Count {
    #[command(flatten)]
    target: Target,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests in all.
    #[arg(long)]
    requests: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Closed(args) => closed(args).await,
        Command::Count(args) => count(args).await,
        Command::Open(args) => open(args).await,
        Command::Capacity(args) => capacity(args).await,
        Command::Sink {
            sink,
            label,
            idle,
            max,
        } => sink_only(sink, &label, idle, max).await,
        Command::Rules { count, sink } => {
            print!("{}", rulegen::rules_yaml(count, &sink));
            ExitCode::SUCCESS
        }
        Command::WrkScript {
            label,
            connections,
            body,
        } => match Bodies::new(body.as_deref()) {
            Ok(bodies) => {
                print!("{}", wrk_script(&bodies, &label, connections));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen wrk-script: {e}");
                ExitCode::from(2)
            }
        },
        Command::FreePorts { count } => free_ports(count),
        Command::Wait { url, timeout } => wait(&url, timeout).await,
        Command::Report { results, criterion } => report(&results, criterion.as_deref()),
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// Distinct request bodies: the fixture with `stats_id` = nonce-connection-number and the
/// event's times set to the time of sending.
#[derive(Clone)]
struct Bodies {
    /// The serialised fixture cut at each mark; `marks[i]` follows `parts[i]`.
    parts: Arc<[String]>,
    marks: Arc<[Mark]>,
    nonce: Arc<str>,
}

/// What goes in at a cut of the fixture.
#[derive(Clone, Copy, PartialEq)]
enum Mark {
    /// The request's own `stats_id`.
    Id,
    /// The time of sending.
    Time,
}

impl Bodies {
    /// Bodies made from the payload in `path` (the built-in fixture without one).
    fn new(path: Option<&Path>) -> Result<Self, String> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            None => FIXTURE.to_string(),
        };
        let mut payload: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: not JSON: {e}",
                path.unwrap_or(Path::new("fixture")).display()
            )
        })?;
        let Some(fields) = payload.as_object_mut() else {
            return Err("the payload is not a JSON object".into());
        };
        fields.insert("stats_id".into(), Value::String(MARK.into()));
        let mut stamped = false;
        for field in TIME_FIELDS {
            if let Some(time) = fields.get_mut(*field) {
                *time = Value::String(TIME_MARK.into());
                stamped = true;
            }
        }
        if !stamped {
            fields.insert(TIME_FIELDS[0].into(), Value::String(TIME_MARK.into()));
        }
        let mut rest = payload.to_string();
        let (mut parts, mut marks) = (Vec::new(), Vec::new());
        while let Some((at, text, mark)) = [(MARK, Mark::Id), (TIME_MARK, Mark::Time)]
            .into_iter()
            .filter_map(|(text, mark)| rest.find(text).map(|at| (at, text, mark)))
            .min_by_key(|(at, _, _)| *at)
        {
            parts.push(rest[..at].to_string());
            marks.push(mark);
            rest = rest[at + text.len()..].to_string();
        }
        parts.push(rest);
        Ok(Bodies {
            parts: parts.into(),
            marks: marks.into(),
            nonce: nonce().into(),
        })
    }

    fn body(&self, connection: usize, n: usize) -> String {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut body = String::with_capacity(FIXTURE.len() + 64);
        for (part, mark) in self.parts.iter().zip(self.marks.iter()) {
            body.push_str(part);
            match mark {
                Mark::Id => {
                    let _ = write!(body, "{}-{connection}-{n}", self.nonce);
                }
                Mark::Time => body.push_str(&now),
            }
        }
        body.push_str(self.parts.last().expect("one part at least"));
        body
    }
}

/// The bodies of a run: one payload, or several that the requests cycle through.
#[derive(Clone)]
struct Mix(Arc<[Bodies]>);

impl Mix {
    fn new(target: &Target) -> Result<Self, String> {
        let list = match target.mix.is_empty() {
            true => vec![Bodies::new(target.body.as_deref())?],
            false => target
                .mix
                .iter()
                .map(|p| Bodies::new(Some(p)))
                .collect::<Result<_, _>>()?,
        };
        Ok(Mix(list.into()))
    }

    fn body(&self, connection: usize, n: usize) -> String {
        self.0[n % self.0.len()].body(connection, n)
    }
}

/// Unique per run, so that a second run on the same store sends no duplicates.
fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("lg{:x}p{}", nanos, std::process::id())
}

fn client(pool: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(pool)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("the HTTP client builds")
}

// ---------------------------------------------------------------------------------------------
// Sink

/// The Slack stand-in: first arrival of each `event_id`, and counts.
#[derive(Clone, Default)]
struct Sink {
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    received: Arc<AtomicUsize>,
    repeated: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Instant>>>,
}

impl Sink {
    async fn start(addr: SocketAddr) -> Sink {
        let sink = Sink::default();
        let recorder = sink.clone();
        let notify = warp::post()
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| {
                recorder.record(&body);
                "ok"
            });
        // GET answers without counting, so that the script can wait for the sink.
        let route = notify.or(warp::get().map(|| "ok")).unify();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("the sink cannot listen on {addr}: {e}"));
        tokio::spawn(warp::serve(route).incoming(listener).run());
        sink
    }

    fn record(&self, body: &[u8]) {
        let now = Instant::now();
        self.received.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap() = Some(now);
        let id = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("event_id")?.as_str().map(str::to_string));
        if let Some(id) = id {
            let mut arrivals = self.arrivals.lock().unwrap();
            if arrivals.len() < MAX_ARRIVALS && !arrivals.contains_key(&id) {
                arrivals.insert(id, now);
            } else {
                self.repeated.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// How many of `ids` have arrived.
    fn arrived(&self, ids: &[&str]) -> usize {
        let arrivals = self.arrivals.lock().unwrap();
        ids.iter().filter(|id| arrivals.contains_key(**id)).count()
    }

    /// Waits until every one of `ids` has arrived, nothing arrived for 10 s, or `timeout`.
    async fn drain(&self, ids: &[&str], timeout: Duration) {
        let started = Instant::now();
        let (mut seen, mut progress) = (0, Instant::now());
        while started.elapsed() < timeout {
            let now = self.arrived(ids);
            if now >= ids.len() {
                return;
            }
            if now > seen {
                (seen, progress) = (now, Instant::now());
            } else if progress.elapsed() > Duration::from_secs(10) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn arrival(&self, id: &str) -> Option<Instant> {
        self.arrivals.lock().unwrap().get(id).copied()
    }
}

async fn sink_only(addr: SocketAddr, label: &str, idle: u64, max: u64) -> ExitCode {
    let sink = Sink::start(addr).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(max) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let last = *sink.last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() > Duration::from_secs(idle)) {
            break;
        }
    }
    let out = json!({
        "kind": "sink",
        "label": label,
        "received": sink.received.load(Ordering::Relaxed),
        "with_event_id": sink.arrivals.lock().unwrap().len(),
        "seconds": round(started.elapsed().as_secs_f64()),
    });
    println!("{out}");
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One answered request.
struct Sample {
    /// When it was sent (closed loop) or due (open loop).
    sent: Instant,
    /// Until the answer was read.
    latency: Duration,
    /// Whether it started after the warm-up.
    measured: bool,
    /// The router's id for the event, when it returned one.
    event_id: Option<String>,
}

/// What happened to one request.
enum Outcome {
    Ok(Duration, Option<String>),
    Status,
    Error,
}

async fn post(client: &reqwest::Client, url: &str, body: String, from: Instant) -> Outcome {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match response {
        Ok(r) => {
            let ok = r.status().is_success();
            let bytes = r.bytes().await;
            let latency = from.elapsed();
            match (ok, bytes) {
                (true, Ok(b)) => {
                    let id = serde_json::from_slice::<Value>(&b)
                        .ok()
                        .and_then(|v| v.get("event_id")?.as_str().map(str::to_string));
                    Outcome::Ok(latency, id)
                }
                (true, Err(_)) => Outcome::Error,
                (false, _) => Outcome::Status,
            }
        }
        Err(_) => Outcome::Error,
    }
}

#[derive(Default)]
struct Tally {
    samples: Vec<Sample>,
    non_2xx: usize,
    errors: usize,
    dropped: usize,
}

impl Tally {
    fn add(&mut self, sent: Instant, measured: bool, outcome: Outcome) {
        match outcome {
            Outcome::Ok(latency, event_id) => self.samples.push(Sample {
                sent,
                latency,
                measured,
                event_id,
            }),
            Outcome::Status => self.non_2xx += 1,
            Outcome::Error => self.errors += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.samples.extend(other.samples);
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.dropped += other.dropped;
    }
}

// ---------------------------------------------------------------------------------------------
// Closed loop

async fn closed(args: Closed) -> ExitCode {
    let target = args.target.clone();
    let Some((bodies, sink)) = bodies_and_sink(&target, "closed").await else {
        return ExitCode::from(2);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        // One client per connection: exactly N connections, each kept alive.
        let (client, url, bodies, stop) = (client(1), target.url(c), bodies.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let outcome = post(&client, &url, bodies.body(c, n), sent).await;
                n += 1;
                let failed = !matches!(outcome, Outcome::Ok(..));
                tally.add(sent, sent >= measure_from, outcome);
                if failed {
                    // Do not spin on a refused connection.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            tally
        }));
    }
    let reloads = args.reload_url.clone().map(|url| {
        let (times, after) = (args.reload_times, args.reload_after);
        let edit = args.reload_edit.clone();
        tokio::spawn(async move { reload_loop(&url, times, after, edit).await })
    });
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_from = Cpu::now(args.server_pid);
    tokio::time::sleep_until((measure_from + Duration::from_secs(args.duration)).into()).await;
    let reloads = match reloads {
        Some(task) => {
            let done = task.await.unwrap_or_default();
            // Keep the load going a little past the last reload.
            tokio::time::sleep(Duration::from_secs(2)).await;
            Some(done)
        }
        None => None,
    };
    stop.store(true, Ordering::Relaxed);
    let load_end = Instant::now();
    let cpu_to = Cpu::now(args.server_pid);
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("a connection task does not panic"));
    }
    let seconds = (load_end - measure_from).as_secs_f64();
    let mut acks: Vec<Duration> = tally
        .samples
        .iter()
        .filter(|s| s.measured)
        .map(|s| s.latency)
        .collect();
    acks.sort_unstable();
    let mut out = json!({
        "kind": "closed",
        "label": target.label,
        "url": target.urls,
        "connections": args.connections,
        "seconds": round(seconds),
        "ok": acks.len(),
        "non_2xx": tally.non_2xx,
        "errors": tally.errors,
        "rps": round(acks.len() as f64 / seconds),
        "p50_ms": ms(pct(&acks, 0.50)),
        "p99_ms": ms(pct(&acks, 0.99)),
        "max_ms": ms(acks.last().copied().unwrap_or_default()),
    });
    if let (Some(from), Some(to)) = (cpu_from, cpu_to) {
        from.report(&to, acks.len(), &mut out);
    }
    if let Some(sink) = &sink {
        delivered(&mut out, sink, &tally.samples, start, load_end, &target).await;
    }
    if let Some(reloads) = reloads {
        out["reloads"] = Value::Array(reloads);
    }
    println!("{out}");
    ExitCode::SUCCESS
}

/// Sends `requests` requests over `connections` connections, waits for their deliveries with
/// a sink, and prints how many were answered 2xx and delivered.
async fn count(args: Count) -> ExitCode {
    let target = args.target.clone();
    let Some((bodies, sink)) = bodies_and_sink(&target, "count").await else {
        return ExitCode::from(2);
    };
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections.max(1) {
        let (client, url, bodies, next) = (client(1), target.url(c), bodies.clone(), next.clone());
        let requests = args.requests;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let sent = Instant::now();
                let outcome = post(&client, &url, bodies.body(c, n), sent).await;
                tally.add(sent, true, outcome);
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("a connection task does not panic"));
    }
    let load_end = Instant::now();
    let ok = tally.samples.iter().filter(|s| s.measured).count();
    let mut out = json!({
        "kind": "count",
        "label": target.label,
        "requests": args.requests,
        "ok": ok,
        "non_2xx": tally.non_2xx,
        "errors": tally.errors,
    });
    if let Some(sink) = &sink {
        delivered(&mut out, sink, &tally.samples, start, load_end, &target).await;
    }
    println!("{out}");
    ExitCode::SUCCESS
}

/// Posts `times` reloads, one after the other, after `after` seconds, each after an edit of
/// `edit` if given; one JSON value each.
async fn reload_loop(url: &str, times: usize, after: u64, edit: Option<PathBuf>) -> Vec<Value> {
    tokio::time::sleep(Duration::from_secs(after)).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(RELOAD_TIMEOUT)
        .build()
        .expect("the HTTP client builds");
    let mut results = Vec::new();
    for i in 0..times {
        if let Some(path) = &edit {
            edit_one_rule(path, i)
                .unwrap_or_else(|e| panic!("cannot edit {}: {e}", path.display()));
        }
        let started = Instant::now();
        let result = client.post(url).send().await;
        let took = started.elapsed();
        results.push(match result {
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                json!({"status": status, "ms": ms(took), "rules_loaded": body["rules_loaded"]})
            }
            Err(e) => json!({"status": null, "ms": ms(took), "error": e.to_string()}),
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    results
}

/// Gives the middle rule of a generated rules file the name `edited-N`, keeping every line
/// where it is, and saves the file as an editor does (a new file renamed over it).
fn edit_one_rule(path: &Path, n: usize) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let rules: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("  - name: "))
        .collect();
    let Some(&middle) = rules.get(rules.len() / 2) else {
        return Err(std::io::Error::other("no rule to edit"));
    };
    lines[middle] = format!("  - name: edited-{n}");
    let tmp = path.with_extension("yaml.edit");
    std::fs::write(&tmp, lines.join("\n") + "\n")?;
    std::fs::rename(&tmp, path)
}

// ---------------------------------------------------------------------------------------------
// Open loop

async fn open(args: Open) -> ExitCode {
    let Some((sink, bodies)) = open_setup(&args, "open").await else {
        return ExitCode::from(2);
    };
    println!("{}", open_loop(&args, args.rate, &sink, &bodies, 0).await);
    ExitCode::SUCCESS
}

/// The sink and the bodies of an open loop, or `None` (with why on stderr).
async fn open_setup(args: &Open, what: &str) -> Option<(Sink, Mix)> {
    if args.target.sink.is_none() {
        eprintln!("loadgen {what}: --sink is required");
        return None;
    }
    if !(args.rate > 0.0 && args.rate <= 100_000.0) {
        eprintln!("loadgen {what}: --rate must be in (0, 100000]");
        return None;
    }
    let (bodies, sink) = bodies_and_sink(&args.target, what).await?;
    Some((sink?, bodies))
}

/// A run's bodies, and its sink when `--sink` is given; `None` (with why on stderr) when the
/// bodies cannot be read.
async fn bodies_and_sink(target: &Target, what: &str) -> Option<(Mix, Option<Sink>)> {
    let bodies = match Mix::new(target) {
        Ok(bodies) => bodies,
        Err(e) => {
            eprintln!("loadgen {what}: {e}");
            return None;
        }
    };
    let sink = match target.sink {
        Some(addr) => Some(Sink::start(addr).await),
        None => None,
    };
    Some((bodies, sink))
}

/// Bisects the open-loop rate between 0 and `--max-rate`: a rate passes when every request
/// is answered 2xx, none is dropped, every event arrives at the sink and POST to arrival p99
/// is within `--p99-ms`. Each run waits for its deliveries before the next starts.
async fn capacity(args: Capacity) -> ExitCode {
    let Some((sink, bodies)) = open_setup(&args.open, "capacity").await else {
        return ExitCode::from(2);
    };
    let (mut passed, mut failed) = (0.0_f64, args.max_rate);
    let mut runs = Vec::new();
    for pass in 0..args.steps.max(1) {
        let rate = ((passed + failed) / 2.0).round().max(1.0);
        if let Some(url) = &args.vacuum {
            vacuum(url).await;
        }
        let run = open_loop(&args.open, rate, &sink, &bodies, pass).await;
        let clean = run["dropped"] == 0
            && run["undelivered"] == 0
            && run["non_2xx"] == 0
            && run["errors"] == 0;
        let ok = clean && run["e2e_p99_ms"].as_f64().is_some_and(|p| p <= args.p99_ms);
        eprintln!(
            "capacity: {rate:.0} events/s {} (POST to sink p99 {} ms, undelivered {})",
            if ok { "passes" } else { "fails" },
            run["e2e_p99_ms"],
            run["undelivered"]
        );
        runs.push(
            json!({"rate": rate, "passed": ok, "e2e_p99_ms": run["e2e_p99_ms"],
            "undelivered": run["undelivered"], "dropped": run["dropped"]}),
        );
        if ok {
            passed = rate;
        } else {
            failed = rate;
        }
    }
    let out = json!({
        "kind": "capacity",
        "label": args.open.target.label,
        "seconds": args.open.duration,
        "p99_limit_ms": args.p99_ms,
        "max_rate": args.max_rate,
        "rate": passed,
        "runs": runs,
    });
    println!("{out}");
    ExitCode::SUCCESS
}

/// `VACUUM ANALYZE` on the database at `url`, asynchronously, so that the sink (on this
/// runtime) keeps answering the routers meanwhile. A failure is reported, not fatal: the rate
/// is then measured on the database as it is.
async fn vacuum(url: &str) {
    use sqlx::Connection as _;
    let started = Instant::now();
    let done = async {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::raw_sql("VACUUM ANALYZE").execute(&mut conn).await?;
        conn.close().await
    };
    match done.await {
        Ok(()) => eprintln!(
            "capacity: VACUUM ANALYZE took {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!("capacity: VACUUM ANALYZE failed: {e}"),
    }
}

/// One open loop at `rate`: its figures, deliveries included. `pass` tells the bodies of
/// successive loops apart (each request is a distinct event).
async fn open_loop(args: &Open, rate: f64, sink: &Sink, bodies: &Mix, pass: usize) -> Value {
    let target = args.target.clone();
    let client = client(args.max_in_flight);
    let slots = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let total = (rate * args.duration as f64).round() as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let mut tally = Tally::default();
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        while let Some(done) = in_flight.try_join_next() {
            let (due, outcome) = done.expect("a request task does not panic");
            tally.add(due, true, outcome);
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tally.dropped += 1;
            continue;
        };
        let (client, url, body) = (client.clone(), target.url(i), bodies.body(pass, i));
        in_flight.spawn(async move {
            let _slot = slot;
            (due, post(&client, &url, body, due).await)
        });
    }
    while let Some(done) = in_flight.join_next().await {
        let (due, outcome) = done.expect("a request task does not panic");
        tally.add(due, true, outcome);
    }
    let load_end = Instant::now();
    let mut acks: Vec<Duration> = tally.samples.iter().map(|s| s.latency).collect();
    acks.sort_unstable();
    let seconds = (load_end - start).as_secs_f64();
    let mut out = json!({
        "kind": "open",
        "label": target.label,
        "url": target.urls,
        "rate": rate,
        "seconds": round(seconds),
        "scheduled": total,
        "ok": acks.len(),
        "non_2xx": tally.non_2xx,
        "errors": tally.errors,
        "dropped": tally.dropped,
        "rps": round(acks.len() as f64 / seconds),
        "p50_ms": ms(pct(&acks, 0.50)),
        "p99_ms": ms(pct(&acks, 0.99)),
        "max_ms": ms(acks.last().copied().unwrap_or_default()),
    });
    delivered(&mut out, sink, &tally.samples, start, load_end, &target).await;
    out
}

// ---------------------------------------------------------------------------------------------
// Delivery figures

/// Waits for the notifications of the accepted events, then adds to `out`: how many arrived,
/// events/s delivered from the first request to the last arrival, and p50/p99 from request
/// (sent or due) to arrival at the sink.
async fn delivered(
    out: &mut Value,
    sink: &Sink,
    samples: &[Sample],
    start: Instant,
    load_end: Instant,
    target: &Target,
) {
    let ids: Vec<&str> = samples
        .iter()
        .filter_map(|s| s.event_id.as_deref())
        .collect();
    sink.drain(&ids, Duration::from_secs(target.drain_timeout))
        .await;
    let mut e2e = Vec::with_capacity(ids.len());
    let mut last = None::<Instant>;
    let mut during = 0;
    for s in samples {
        let Some(at) = s.event_id.as_deref().and_then(|id| sink.arrival(id)) else {
            continue;
        };
        e2e.push(at.saturating_duration_since(s.sent));
        // Arrivals by the time the load ended: a router that acknowledges far faster than
        // it delivers shows here, whatever it delivers after.
        during += usize::from(at <= load_end);
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    e2e.sort_unstable();
    let span = last.map_or(0.0, |l| (l - start).as_secs_f64());
    out["accepted"] = json!(ids.len());
    out["delivered"] = json!(e2e.len());
    out["undelivered"] = json!(ids.len() - e2e.len());
    out["delivered_per_s"] = json!(if span > 0.0 {
        round(e2e.len() as f64 / span)
    } else {
        0.0
    });
    out["drain_s"] = json!(round(last.map_or(0.0, |l| {
        l.saturating_duration_since(load_end).as_secs_f64()
    })));
    out["delivered_during_load"] = json!(during);
    out["e2e_p50_ms"] = json!(ms(pct(&e2e, 0.50)));
    out["e2e_p99_ms"] = json!(ms(pct(&e2e, 0.99)));
    out["sink_received"] = json!(sink.received.load(Ordering::Relaxed));
    out["sink_repeated"] = json!(sink.repeated.load(Ordering::Relaxed));
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// CPU seconds used so far by the server, by this process and by the whole machine (busy and
/// in all), read from /proc (Linux).
struct Cpu {
    server: f64,
    own: f64,
    busy: f64,
    total: f64,
}

/// Clock ticks per second (USER_HZ), the unit of the CPU times in /proc; 100 where it cannot be
/// read (the value on Linux for x86 and ARM).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads its argument.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

impl Cpu {
    fn now(server: Option<u32>) -> Option<Cpu> {
        let hz = ticks_per_second();
        // utime and stime, the 14th and 15th fields of /proc/PID/stat, in clock ticks.
        let process = |path: String| -> Option<f64> {
            let stat = std::fs::read_to_string(path).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / hz)
        };
        // The first line of /proc/stat: user nice system idle iowait irq softirq steal…
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let machine: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total = machine.iter().sum::<u64>() as f64 / hz;
        let idle = (machine.get(3)? + machine.get(4)?) as f64 / hz;
        Some(Cpu {
            server: process(format!("/proc/{}/stat", server?))?,
            own: process("/proc/self/stat".into())?,
            busy: total - idle,
            total,
        })
    }

    /// Adds CPU microseconds per request (server, load generator) and the machine's busy share
    /// between `self` and `to`.
    fn report(&self, to: &Cpu, requests: usize, out: &mut Value) {
        let per = |secs: f64| round(secs * 1e6 / requests.max(1) as f64);
        out["server_cpu_us"] = json!(per(to.server - self.server));
        out["loadgen_cpu_us"] = json!(per(to.own - self.own));
        let total = to.total - self.total;
        if total > 0.0 {
            out["machine_busy_pct"] = json!(round(100.0 * (to.busy - self.busy) / total));
        }
    }
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Helpers for the script

fn wrk_script(bodies: &Bodies, label: &str, connections: usize) -> String {
    format!(
        r#"-- Generated by `loadgen wrk-script`: distinct EMAIL_REPLY bodies, one JSON line at the end.
local parts = {{ {parts} }}
local marks = {{ {marks} }}
local nonce = "{nonce}-wrk"
local label = "{label}"
local connections = {connections}
local counter = 0
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function request()
  counter = counter + 1
  local id = nonce .. "-" .. tid .. "-" .. counter
  local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local body = {{}}
  for i, part in ipairs(parts) do
    body[#body + 1] = part
    if marks[i] == "id" then body[#body + 1] = id elseif marks[i] == "time" then body[#body + 1] = now end
  end
  body = table.concat(body)
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json"}}, body)
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{{"kind":"wrk","label":"%s","connections":%d,"seconds":%.3f,"requests":%d,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"non_2xx":%d,"errors":%d}}\n',
    label, connections, seconds, summary.requests, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.status, errors))
end
"#,
        parts = bodies
            .parts
            .iter()
            .map(|p| format!("[==[{p}]==]"))
            .collect::<Vec<_>>()
            .join(", "),
        marks = bodies
            .marks
            .iter()
            .map(|m| match m {
                Mark::Id => "\"id\"",
                Mark::Time => "\"time\"",
            })
            .collect::<Vec<_>>()
            .join(", "),
        nonce = bodies.nonce,
    )
}

fn free_ports(count: usize) -> ExitCode {
    // Hold every listener until all are printed, so the ports differ.
    let listeners: Vec<std::net::TcpListener> = (0..count.min(16))
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port is free"))
        .collect();
    for l in &listeners {
        println!("{}", l.local_addr().expect("bound").port());
    }
    ExitCode::SUCCESS
}

async fn wait(url: &str, timeout: u64) -> ExitCode {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("the HTTP client builds");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(timeout) {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("loadgen wait: {url} did not answer 200 within {timeout} s");
    ExitCode::FAILURE
}

// ---------------------------------------------------------------------------------------------
// Report

/// One line of the table: what, the figure, the target, and whether it is met.
struct Line {
    what: String,
    figure: String,
    target: &'static str,
    verdict: Option<bool>,
}

impl Line {
    fn info(what: impl Into<String>, figure: impl Into<String>) -> Line {
        Line {
            what: what.into(),
            figure: figure.into(),
            target: "",
            verdict: None,
        }
    }

    /// A line with a target; a missing figure fails it.
    fn check(
        what: impl Into<String>,
        figure: Option<(String, bool)>,
        target: &'static str,
    ) -> Line {
        let (figure, verdict) = figure.unwrap_or_else(|| ("missing".into(), false));
        Line {
            what: what.into(),
            figure,
            target,
            verdict: Some(verdict),
        }
    }
}

/// The rates a capacity search tried, in order, each with how it went: `12000 no, 6000 ok, …`.
fn rates_tried(c: &Value) -> String {
    let tried: Vec<String> = c["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .map(|r| {
                    let verdict = if r["passed"] == true { "ok" } else { "no" };
                    format!("{:.0} {verdict}", r["rate"].as_f64().unwrap_or(0.0))
                })
                .collect()
        })
        .unwrap_or_default();
    tried.join(", ")
}

/// A closed-loop run's line: throughput, latency, failures.
fn closed_row(r: &Value) -> String {
    format!(
        "{:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  failed {}",
        r["rps"].as_f64().unwrap_or(0.0),
        r["p50_ms"].as_f64().unwrap_or(0.0),
        r["p99_ms"].as_f64().unwrap_or(0.0),
        r["non_2xx"].as_u64().unwrap_or(0) + r["errors"].as_u64().unwrap_or(0),
    )
}

fn report(results: &Path, criterion: Option<&Path>) -> ExitCode {
    let text = std::fs::read_to_string(results).unwrap_or_default();
    let records: Vec<Value> = text
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |kind: &str, label: &str| -> Option<&Value> {
        records
            .iter()
            .rev()
            .find(|r| r["kind"] == kind && r["label"] == label)
    };
    let num = |r: Option<&Value>, key: &str| r.and_then(|r| r[key].as_f64());
    let benches = criterion
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| bencher_lines(&t))
        .unwrap_or_default();

    let mut sections: Vec<(String, Vec<Line>)> = Vec::new();

    // (1) Acknowledgement.
    let bare = find("closed", "bare");
    let router = find("closed", "router");
    let intake = find("closed", "intake");
    let reference = find("closed", "bare-commit");
    let (wrk_bare, wrk_router) = (find("wrk", "bare"), find("wrk", "router"));
    let mut lines = Vec::new();
    for (name, r) in [
        ("bare warp, loadgen", bare),
        ("bare warp + SQLite group commit (reference)", reference),
        ("router (SQLite, durable), loadgen", router),
        ("router, intake alone (nothing delivered)", intake),
        ("bare warp, wrk", wrk_bare),
        ("router (SQLite, durable), wrk", wrk_router),
    ] {
        if let Some(r) = r {
            lines.push(Line::info(name, closed_row(r)));
        }
    }
    // Where the cores went: per request, the server and the load generator (whose sink also
    // receives the router's deliveries), and how busy the machine was.
    for (name, r) in [
        ("bare warp", bare),
        ("reference", reference),
        ("router", router),
        ("intake alone", intake),
    ] {
        if let Some(r) = r
            && let Some(cpu) = r["server_cpu_us"].as_f64()
        {
            lines.push(Line::info(
                format!("CPU per request: {name}, loadgen"),
                format!(
                    "{cpu:.0} µs, {:.0} µs  (machine busy {:.0} %)",
                    r["loadgen_cpu_us"].as_f64().unwrap_or(0.0),
                    r["machine_busy_pct"].as_f64().unwrap_or(0.0)
                ),
            ));
        }
    }
    // Not judged: the same ratio for the reference (durability alone) and for intake alone.
    for (name, r) in [("reference", reference), ("intake alone", intake)] {
        if let (Some(b), Some(x)) = (num(bare, "rps"), num(r, "rps"))
            && b > 0.0
        {
            lines.push(Line::info(
                format!("{name} / bare throughput (loadgen)"),
                format!("{:.0} %", 100.0 * x / b),
            ));
        }
    }
    // Intake against durability alone: the router's own cost on top of the commit it must make.
    lines.push(Line::check(
        "intake alone / reference throughput (loadgen)",
        num(intake, "rps")
            .zip(num(reference, "rps"))
            .filter(|(_, r)| *r > 0.0)
            .map(|(i, r)| (format!("{:.0} %", 100.0 * i / r), i / r >= 0.85)),
        ">= 85 %",
    ));
    lines.push(Line::check(
        "intake alone p99 / reference p99 (loadgen)",
        num(intake, "p99_ms")
            .zip(num(reference, "p99_ms"))
            .filter(|(_, r)| *r > 0.0)
            .map(|(i, r)| (format!("{:.2} x", i / r), i / r <= 1.3)),
        "<= 1.3 x",
    ));
    // Rule memory: the shipped rules against the same without their memory keys, the mean of
    // the rounds of each.
    let mean = |label: &str| {
        let rps: Vec<f64> = records
            .iter()
            .filter(|r| r["kind"] == "closed" && r["label"] == label)
            .filter_map(|r| r["rps"].as_f64())
            .collect();
        (!rps.is_empty()).then(|| rps.iter().sum::<f64>() / rps.len() as f64)
    };
    let (stateless, stateful) = (mean("intake-stateless"), mean("intake-stateful"));
    for (name, rps) in [
        ("intake, shipped rules without memory (mix)", stateless),
        ("intake, shipped rules with memory (mix)", stateful),
    ] {
        if let Some(rps) = rps {
            lines.push(Line::info(name, format!("{rps:>8.0} req/s")));
        }
    }
    if stateless.is_some() || stateful.is_some() {
        lines.push(Line::check(
            "rule memory: stateful / stateless intake (loadgen)",
            stateless
                .zip(stateful)
                .filter(|(a, _)| *a > 0.0)
                .map(|(a, b)| (format!("{:.0} %", 100.0 * b / a), b / a >= 0.85)),
            ">= 85 %",
        ));
    }
    // wrk is the better load tool when it is there: the targets are judged on its figures.
    let (b, r, tool) = if wrk_bare.is_some() && wrk_router.is_some() {
        (wrk_bare, wrk_router, "wrk")
    } else {
        (bare, router, "loadgen")
    };
    let ratio = match (num(b, "rps"), num(r, "rps")) {
        (Some(b), Some(r)) if b > 0.0 => Some(r / b),
        _ => None,
    };
    // Not judged any more: durability alone lands near half of bare warp on this machine, so
    // intake is judged against the reference above.
    if let Some(x) = ratio {
        lines.push(Line::info(
            format!("durable / bare throughput ({tool})"),
            format!("{:.0} %", x * 100.0),
        ));
    }
    let connections = num(r, "connections").unwrap_or(0.0);
    if let Some(p) = num(r, "p99_ms") {
        lines.push(Line::info(
            format!("durable ack p99 at {connections:.0} connections ({tool})"),
            format!("{p:.2} ms"),
        ));
    }
    sections.push((
        "(1) Acknowledgement: POST /webhooks/smartlead, closed loop".into(),
        lines,
    ));

    // (2) End to end.
    let open = find("open", "open");
    let mut lines = Vec::new();
    if let Some(r) = router {
        lines.push(Line::info(
            "saturation run: delivered / accepted",
            format!(
                "{} / {}  (backlog drained {:.1} s after the load)",
                r["delivered"],
                r["accepted"],
                r["drain_s"].as_f64().unwrap_or(0.0)
            ),
        ));
    }
    if let Some(r) = router
        && let (Some(during), Some(accepted)) =
            (r["delivered_during_load"].as_f64(), r["accepted"].as_f64())
        && accepted > 0.0
    {
        lines.push(Line::info(
            "saturation run: delivered while the load ran",
            format!("{:.0} %", during / accepted * 100.0),
        ));
    }
    lines.push(Line::check(
        "saturation run: POST to sink p99",
        num(router, "e2e_p99_ms").map(|p| (format!("{:.0} ms", p), p <= 1000.0)),
        "<= 1 s",
    ));
    let capacity = find("capacity", "capacity");
    if let Some(c) = capacity {
        lines.push(Line::info(
            "sustained capacity: rates tried",
            rates_tried(c),
        ));
    }
    lines.push(Line::check(
        "sustained capacity (all delivered, p99 <= 100 ms) / reference",
        num(capacity, "rate")
            .zip(num(reference, "rps"))
            .filter(|(_, r)| *r > 0.0)
            .map(|(c, r)| {
                (
                    format!("{c:.0} events/s = {:.0} %", c / r * 100.0),
                    c / r >= 0.40,
                )
            }),
        ">= 40 %",
    ));
    lines.push(Line::check(
        "delivered at saturation (first POST to last arrival)",
        num(router, "delivered_per_s").map(|x| (format!("{x:.0} events/s"), x >= 5000.0)),
        ">= 5,000 events/s",
    ));
    if let Some(o) = open {
        lines.push(Line::info(
            format!("open loop {} events/s: ack", o["rate"]),
            format!(
                "p50 {:.2} ms  p99 {:.2} ms  sent {}  dropped {}  failed {}  undelivered {}",
                o["p50_ms"].as_f64().unwrap_or(0.0),
                o["p99_ms"].as_f64().unwrap_or(0.0),
                o["ok"],
                o["dropped"],
                o["non_2xx"].as_u64().unwrap_or(0) + o["errors"].as_u64().unwrap_or(0),
                o["undelivered"],
            ),
        ));
        lines.push(Line::info(
            "open loop: POST to sink p50",
            format!("{:.2} ms", o["e2e_p50_ms"].as_f64().unwrap_or(0.0)),
        ));
    }
    let rate = num(open, "rate").unwrap_or(0.0);
    let clean = open.is_some_and(|o| {
        o["dropped"] == 0 && o["undelivered"] == 0 && o["non_2xx"] == 0 && o["errors"] == 0
    });
    lines.push(Line::check(
        format!("open loop {rate:.0} events/s: POST to sink p99"),
        num(open, "e2e_p99_ms")
            .map(|p| (format!("{p:.2} ms"), p <= 25.0 && rate >= 1000.0 && clean)),
        "<= 25 ms at 1,000/s",
    ));
    sections.push(("(2) End to end: POST to arrival at the sink".into(), lines));

    // PostgreSQL, when the suite was given one: the same intake as the SQLite row above, and
    // the sustained capacity of one router against two sharing the database.
    let postgres = find("closed", "intake-postgres");
    let mut lines = Vec::new();
    if let Some(pg) = postgres {
        lines.push(Line::info(
            "router, intake alone, PostgreSQL",
            closed_row(pg),
        ));
        lines.push(Line::check(
            "PostgreSQL intake / SQLite intake",
            num(Some(pg), "rps")
                .zip(num(intake, "rps"))
                .filter(|(_, s)| *s > 0.0)
                .map(|(p, s)| (format!("{:.0} %", p / s * 100.0), p / s >= 0.60)),
            ">= 60 %",
        ));
    }
    let one = find("capacity", "capacity-postgres-1");
    let two = find("capacity", "capacity-postgres-2");
    for (name, c) in [("one router", one), ("two routers", two)] {
        if let Some(c) = c {
            lines.push(Line::info(
                format!("sustained capacity, {name} (rates tried)"),
                format!(
                    "{:.0} events/s ({})",
                    c["rate"].as_f64().unwrap_or(0.0),
                    rates_tried(c)
                ),
            ));
        }
    }
    if one.is_some() || two.is_some() {
        lines.push(Line::check(
            "sustained capacity: two routers / one, one database",
            num(two, "rate")
                .zip(num(one, "rate"))
                .filter(|(_, o)| *o > 0.0)
                .map(|(t, o)| (format!("{:.2} x", t / o), t / o >= 1.6)),
            ">= 1.6 x",
        ));
    }
    if !lines.is_empty() {
        sections.push(("PostgreSQL (BENCH_POSTGRES_URL)".into(), lines));
    }

    // (3) Matching and rendering.
    let mut lines = Vec::new();
    for (id, ns) in &benches {
        lines.push(Line::info(
            id.clone(),
            format!("{:.2} µs per event", ns / 1000.0),
        ));
    }
    let matching = benches
        .iter()
        .find(|(id, _)| id == "matching/10000")
        .map(|(_, ns)| *ns);
    lines.push(Line::check(
        "matching, 10,000 rules",
        matching.map(|ns| (format!("{:.2} µs", ns / 1000.0), ns <= 20_000.0)),
        "<= 20 µs per event",
    ));
    sections.push((
        "(3) Rule matching and rendering (criterion median, per event)".into(),
        lines,
    ));

    // (4) Reload.
    let reload = find("closed", "reload");
    let mut lines = Vec::new();
    let reloads: Vec<&Value> = reload
        .and_then(|r| r["reloads"].as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut times: Vec<f64> = reloads.iter().filter_map(|r| r["ms"].as_f64()).collect();
    times.sort_by(f64::total_cmp);
    let all_ok = !reloads.is_empty()
        && reloads
            .iter()
            .all(|r| r["status"] == 200 && r["rules_loaded"].as_u64() >= Some(10_000));
    if let Some(r) = reloads.first() {
        lines.push(Line::info(
            "reload: rules loaded, answers",
            format!(
                "{}  [{}]",
                r["rules_loaded"],
                reloads
                    .iter()
                    .map(|r| format!(
                        "{} in {:.0} ms",
                        r["status"],
                        r["ms"].as_f64().unwrap_or(0.0)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let loaded = reloads
        .first()
        .map_or(Value::Null, |r| r["rules_loaded"].clone());
    lines.push(Line::check(
        format!("reload time, {loaded} rules (median)"),
        times
            .get(times.len() / 2)
            .map(|t| (format!("{t:.0} ms"), all_ok && *t <= 300.0)),
        "<= 300 ms, 200, >= 10,000",
    ));
    if let Some(r) = reload {
        lines.push(Line::info(
            "load during reloads",
            format!(
                "{:.0} req/s  p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms",
                r["rps"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0),
            ),
        ));
    }
    let failed =
        reload.map(|r| r["non_2xx"].as_u64().unwrap_or(0) + r["errors"].as_u64().unwrap_or(0));
    lines.push(Line::check(
        "failed requests while reloading under load",
        failed.map(|f| (f.to_string(), f == 0 && !reloads.is_empty())),
        "= 0",
    ));
    sections.push(("(4) Reload under load: POST /-/reload".into(), lines));

    // (5) Memory.
    let mut lines = Vec::new();
    let rss = |label: &str| num(find("rss", label), "vmhwm_kib").map(|k| k / 1024.0);
    lines.push(Line::check(
        "peak RSS of the router under load (VmHWM, 1 rule)",
        rss("load").map(|m| (format!("{m:.1} MiB"), m <= 40.0)),
        "<= 40 MiB",
    ));
    if let Some(m) = rss("capacity") {
        lines.push(Line::info(
            "peak RSS through the capacity search (VmHWM, overloaded)",
            format!("{m:.1} MiB"),
        ));
    }
    lines.push(Line::check(
        format!("peak RSS through the {loaded}-rule reloads (VmHWM from their start)"),
        rss("reload").map(|m| (format!("{m:.1} MiB"), m <= 96.0)),
        "<= 96 MiB",
    ));
    sections.push(("(5) Memory".into(), lines));

    // (6) Instructions per event (callgrind): repeatable, so a change can be judged without the
    // machine's noise.
    let mut lines = Vec::new();
    let per = |label: &str| num(find("instructions", label), "per_event");
    for (name, label) in [
        (
            "reference (bare warp + SQLite group commit), per request",
            "reference",
        ),
        ("router, intake alone, per event", "intake"),
        ("router, per event acknowledged and delivered", "deliver"),
    ] {
        if let Some(n) = per(label) {
            let ratio = per("reference")
                .filter(|r| *r > 0.0)
                .map(|r| format!("  ({:.1} x the reference)", n / r))
                .unwrap_or_default();
            lines.push(Line::info(name, format!("{n:>10.0} instructions{ratio}")));
        }
    }
    if !lines.is_empty() {
        sections.push(("(6) CPU instructions per event (callgrind)".into(), lines));
    }

    let mut missed = 0;
    for (title, lines) in &sections {
        println!("\n{title}");
        for l in lines {
            let verdict = match l.verdict {
                Some(true) => "PASS",
                Some(false) => {
                    missed += 1;
                    "FAIL"
                }
                None => "",
            };
            println!(
                "  {:<54} {:<58} {:<22} {verdict}",
                l.what, l.figure, l.target
            );
        }
    }
    println!();
    if missed == 0 {
        println!("Every target met.");
        ExitCode::SUCCESS
    } else {
        println!("{missed} target(s) missed or not measured.");
        ExitCode::FAILURE
    }
}

/// `(id, median ns)` from criterion's `--output-format bencher` lines:
/// `test matching/10000 ... bench:      12,345 ns/iter (+/- 678)`.
fn bencher_lines(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("test ")?;
            let (id, rest) = rest.split_once(" ... bench:")?;
            let mut words = rest.split_whitespace();
            let value: f64 = words.next()?.replace(',', "").parse().ok()?;
            let scale = match words.next()? {
                "ps/iter" => 0.001,
                "ns/iter" => 1.0,
                "us/iter" | "µs/iter" => 1_000.0,
                "ms/iter" => 1_000_000.0,
                "s/iter" => 1_000_000_000.0,
                _ => return None,
            };
            Some((id.trim().to_string(), value * scale))
        })
        .collect()
}
