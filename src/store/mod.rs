//! The delivery store: accepted events, their deliveries, every attempt, dead letters and the
//! keys that recognise a repeated webhook. One interface, one file per backend (SQL stays in
//! this module); SQLite is the embedded default.
//!
//! [`Committer`] groups the writes of concurrent requests and of the workers (events, attempt
//! records, claims) into one transaction (one fsync for many events), so a `200` can wait for
//! the commit without costing much throughput.

mod commit;
pub mod memory;
mod postgres;
mod rows;
mod sqlite;
mod status;

pub use commit::Committer;
pub use status::{DeliveryStatus, UnknownStatus};

use serde::Serialize;
use std::time::Duration;

/// Unix time in milliseconds.
pub type Millis = i64;

/// Now, in Unix milliseconds.
pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// A store error: the database could not be opened, migrated or queried.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The `--store` URL is not one this build understands.
    #[error(
        "unsupported store URL {0:?}: use sqlite://PATH, sqlite::memory: (no persistence) or postgres://…"
    )]
    Unsupported(String),
    /// The database answered with an error.
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The group committer has stopped (the router is shutting down).
    #[error("the store is shutting down")]
    Closed,
    /// The group commit this write was part of failed, and every write in it with it (the
    /// error is the commit's, told to each of its writers).
    #[error("store: the group commit failed: {0}")]
    Batch(String),
    /// The store's answer does not fit what was asked (a row or a count this code does not
    /// expect: a schema of another version, or a bug).
    #[error("store: unexpected answer: {0}")]
    Mismatch(String),
    /// The SQLite database file was deleted or replaced while the router had it open: what is
    /// written now would be lost at the next start, so nothing is acknowledged.
    #[error(
        "store: the database file {0} was deleted or replaced since the router opened it; nothing is acknowledged until the router is restarted (check what removed it; the events written since it was opened are in the file the router still holds open, readable under /proc/{pid}/fd until it stops)",
        pid = std::process::id()
    )]
    Replaced(String),
    /// The write did not finish in time for the webhook's answer (a locked or frozen store);
    /// it may still finish (a retry of the webhook is then a duplicate).
    #[error("store: the write did not finish within {0:?}")]
    Stalled(std::time::Duration),
    /// The task making the write ended before the write did (it panicked).
    #[error("store: the write was abandoned: {0}")]
    Abandoned(String),
}

/// An event to record, with the deliveries it gives rise to.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The router's event id.
    pub id: String,
    /// The webhook source (`smartlead`).
    pub source: String,
    /// The canonical type.
    pub event_type: String,
    /// The lead's email, for history queries.
    pub lead_email: Option<String>,
    /// The campaign's id, for the console's filters.
    pub campaign_id: Option<String>,
    /// The configuration that matched it.
    pub config_hash: String,
    /// The canonical event as JSON.
    pub payload: String,
    /// What identifies this webhook delivery (a repeat has the same key).
    pub dedup_key: String,
    /// One per (rule, action) that matched, or may match once memory is read.
    pub deliveries: Vec<NewDelivery>,
    /// What decides, inside the intake transaction, the deliveries that depend on what rules
    /// remember across events (`once`, …); `None`: each delivery is as intake made it (sent,
    /// or silenced, or held or dropped for its time window).
    pub memory: Option<std::sync::Arc<dyn memory::Decider>>,
    /// Record the deliveries as already claimed by this instance (`sending`): intake hands them
    /// straight to its own workers after the commit instead of leaving them for a claim. A
    /// crash before they finish leaves them to recovery at the next start (SQLite) or lease
    /// expiry (PostgreSQL); a send that does not finish while the router runs, to lease expiry.
    pub claimed: bool,
}

/// A delivery to create.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The rule's name.
    pub rule: String,
    /// The action's position in the rule.
    pub action_index: u32,
    /// `slack`, `email`, `http`, `log`.
    pub action_kind: String,
    /// The destination name (or `rule#n` for an inline action): the unit of concurrency.
    pub destination: String,
    /// When it may be sent, as its action's time window says.
    pub timing: Timing,
    /// A silence in force matches its event and rule: it is kept `suppressed` (`silenced`).
    pub silenced: bool,
}

/// When a delivery may be sent, as its action's time window (`active`) says at intake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Timing {
    /// Now (no window, or inside it).
    #[default]
    Now,
    /// Outside its window, with `outside: drop`: not sent.
    Drop,
    /// Outside its window: held until it opens, at this time.
    Hold(Millis),
    /// Outside its window, with `outside: digest`: folded into the action's digest, sent when
    /// it opens at this time.
    Digest(Millis),
}

/// What happened to an event handed to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// Recorded, with its deliveries, one per delivery given, in order (`None`: its rule did
    /// not match once memory was read, and nothing was recorded for it).
    Accepted(Vec<Option<Created>>),
    /// The same webhook was seen before, as this event.
    Duplicate(String),
}

/// A delivery created for an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// Its id.
    pub id: i64,
    /// Whether it is sent, held for its time window, or was recorded `suppressed` (never
    /// sent).
    pub verdict: memory::Verdict,
}

/// The workers asking for due deliveries.
#[derive(Debug, Clone)]
pub struct Claim {
    /// At most this many.
    pub limit: u32,
    /// At most this many sends in flight to one destination, counting those in `in_use`.
    pub per_destination: u32,
    /// Sends this instance has in flight, per destination (a destination not listed has
    /// none): a destination takes only the room it has left, none when at its limit.
    pub in_use: Vec<(String, u32)>,
    /// Deliveries this instance has in flight (sent, their attempt not yet recorded): none of
    /// these, even when a record in the same batch has just made one due again.
    pub in_flight: Vec<i64>,
}

/// What one group commit did.
#[derive(Debug, Clone, Default)]
pub struct CommitOutcome {
    /// One per event written, in order.
    pub intakes: Vec<Intake>,
    /// One list of claimed deliveries per claim, in order.
    pub claimed: Vec<Vec<Due>>,
}

/// A delivery claimed for sending.
#[derive(Debug, Clone)]
pub struct Due {
    /// Delivery id.
    pub id: i64,
    /// Event id.
    pub event_id: String,
    /// Rule name.
    pub rule: String,
    /// Action position in the rule.
    pub action_index: u32,
    /// Destination (unit of concurrency).
    pub destination: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// What rule memory adds to the event for this delivery's templates: a JSON object merged
    /// over it (`{"noise": {"suppressed": 3}}`).
    pub context: Option<String>,
    /// The configuration that matched the event.
    pub config_hash: String,
    /// The canonical event as JSON.
    pub payload: String,
    /// When the event was accepted.
    pub received_at: Millis,
}

/// One attempt's record.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it started.
    pub started_at: Millis,
    /// How long it took.
    pub duration_ms: i64,
    /// HTTP status or SMTP code, when there was an answer.
    pub status_code: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// An attempt made, and where its delivery goes next.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Delivery id.
    pub id: i64,
    /// The attempt.
    pub attempt: Attempt,
    /// What comes next.
    pub next: Next,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone)]
pub enum Next {
    /// Delivered; final.
    Delivered,
    /// Try again at this time.
    Retry(Millis),
    /// Out of attempts or failed permanently; kept as a dead letter.
    Dead,
    /// Not sent (destination not configured); final.
    Skipped,
    /// Not tried: outside its action's time window, it waits until it opens at this time.
    Hold(Millis),
    /// Not tried, and not to be (outside a time window with `outside: drop`, …); final.
    Suppressed(&'static str),
}

/// A delivery as history shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    /// Delivery id.
    pub id: i64,
    /// Event id.
    pub event_id: String,
    /// Canonical event type.
    pub event_type: String,
    /// The lead's email.
    pub lead_email: Option<String>,
    /// Rule name.
    pub rule: String,
    /// Action kind.
    pub action: String,
    /// Destination.
    pub destination: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending only), RFC 3339.
    pub next_attempt_at: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
    /// Why it was suppressed (`once`, …), or held (`outside` its time window, pending).
    pub reason: Option<String>,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// When it last changed, RFC 3339.
    pub updated_at: String,
    /// For a digest's delivery: the events the digest holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_items: Option<u64>,
    /// Every attempt, oldest first (filled for single deliveries and dead letters).
    pub history: Vec<AttemptView>,
}

/// One attempt as history shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    /// When it started, RFC 3339.
    pub at: String,
    /// How long it took.
    pub duration_ms: i64,
    /// delivered, retry, dead, skipped.
    pub outcome: String,
    /// HTTP status or SMTP code.
    pub status_code: Option<u16>,
    /// The error.
    pub error: Option<String>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this status.
    pub status: Option<DeliveryStatus>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only this lead's email.
    pub lead: Option<String>,
    /// At most this many, newest first (default 100).
    pub limit: Option<u32>,
    /// Include each delivery's attempts.
    pub with_history: bool,
}

impl Filter {
    /// Every dead letter (the first 1,000), with its attempts.
    pub fn dead_letters() -> Self {
        Filter {
            status: Some(DeliveryStatus::Dead),
            limit: Some(1000),
            with_history: true,
            ..Filter::default()
        }
    }
}

/// Counts by status, for `/api/status` and `/readyz`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Waiting to be sent (including retries).
    pub pending: u64,
    /// Being sent now.
    pub sending: u64,
    /// Dead letters.
    pub dead: u64,
    /// Unix ms of the oldest pending delivery, those held for their time window aside.
    pub oldest_pending_ms: Option<Millis>,
}

/// A live router instance, as `/api/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// The instance's id (new at every start).
    pub id: String,
    /// The address it listens on.
    pub listen: String,
    /// The configuration it runs.
    pub config_hash: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// Its last heartbeat, RFC 3339.
    pub heartbeat_at: String,
    /// Whether it is the instance answering.
    pub current: bool,
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a claimed delivery belongs to its instance without a heartbeat (PostgreSQL),
    /// or stays `sending` without being sent (SQLite: a send that did not finish).
    pub lease: Duration,
    /// Whether to bring the schema up to date (off for a store only read, such as `test
    /// --store`: a newer binary must not migrate a store that routers are using).
    pub migrate: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lease: Duration::from_secs(30),
            migrate: true,
        }
    }
}

/// The store: one variant per backend.
#[derive(Clone)]
pub enum Store {
    /// SQLite, embedded: one instance.
    Sqlite(sqlite::Sqlite),
    /// PostgreSQL: shared by several instances.
    Postgres(postgres::Postgres),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

/// Runs the same query on either backend's read pool (or write pool with `writer`).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite(s) => {
                let $pool = &s.reader;
                $body
            }
            Store::Postgres(p) => {
                let $pool = &p.pool;
                $body
            }
        }
    };
    (writer $store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite(s) => {
                let $pool = &s.writer;
                $body
            }
            Store::Postgres(p) => {
                let $pool = &p.pool;
                $body
            }
        }
    };
}

pub mod configs;
pub mod console;
pub mod digests;
// After `dispatch!`, which it uses.
mod silences;
pub use silences::SilenceRow;

impl Store {
    /// Opens (creating and migrating) the store named by a `--store` URL.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_with(url, &Options::default()).await
    }

    /// Opens the store with explicit options.
    pub async fn open_with(url: &str, options: &Options) -> Result<Store, StoreError> {
        let instance = uuid::Uuid::now_v7().to_string();
        if url.starts_with("sqlite:") {
            return Ok(Store::Sqlite(
                sqlite::Sqlite::open(url, instance, options).await?,
            ));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Store::Postgres(
                postgres::Postgres::open(url, instance, options).await?,
            ));
        }
        Err(StoreError::Unsupported(url.to_string()))
    }

    /// Records this instance as alive (with its configuration). `sending` lists the deliveries
    /// it has in flight: with PostgreSQL their leases are renewed (a claimed one it is not
    /// sending lapses and is taken over); with SQLite, a `sending` one not listed goes back to
    /// pending once a lease has passed since it was claimed.
    pub async fn heartbeat(
        &self,
        listen: &str,
        config_hash: &str,
        sending: &[i64],
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.heartbeat(listen, config_hash, sending).await)
    }

    /// Instances with a heartbeat since `alive_since`.
    pub async fn instances(&self, alive_since: Millis) -> Result<Vec<InstanceView>, StoreError> {
        dispatch!(self, s => s.instances(alive_since).await)
    }

    /// Calls `wake` when another writer stores new deliveries (PostgreSQL `NOTIFY`); SQLite has
    /// one writer, which wakes its own workers directly.
    pub async fn listen(&self, wake: Box<dyn Fn() + Send + Sync>) -> Result<(), StoreError> {
        dispatch!(self, s => s.listen(wake).await)
    }

    /// Records a batch of events and of finished attempts, then makes the claims (each marks up
    /// to its limit of due deliveries as sending, each destination's within its room), all in one
    /// transaction. A handful of multi-row statements serve the whole batch.
    pub async fn write(
        &self,
        events: &[NewEvent],
        done: &[Finished],
        claims: &[Claim],
    ) -> Result<CommitOutcome, StoreError> {
        dispatch!(self, s => s.write(events, done, claims).await)
    }

    /// Whether the database is driven by threads of its own (SQLite), so that any tokio runtime
    /// may use it. A PostgreSQL connection belongs to the runtime that opened it: there the
    /// committer and the workers share the main runtime.
    pub fn runtime_free(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }

    /// The group committer has nothing more queued: what it held between back-to-back commits
    /// (SQLite's writer connection) is given back.
    pub async fn pause(&self) {
        if let Store::Sqlite(s) = self {
            s.pause().await;
        }
    }

    /// Puts deliveries left `sending` by a process that died back to `pending`.
    pub async fn recover(&self) -> Result<u64, StoreError> {
        dispatch!(self, s => s.recover().await)
    }

    /// Puts `sending` deliveries back to pending (on shutdown, for those not finished).
    pub async fn release(&self, ids: &[i64]) -> Result<(), StoreError> {
        dispatch!(self, s => s.release(ids).await)
    }

    /// When the next pending delivery is due.
    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        dispatch!(self, s => s.next_due().await)
    }

    /// Deliveries matching a filter, newest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<DeliveryView>, StoreError> {
        dispatch!(self, s => s.list(filter).await)
    }

    /// Requeues one dead letter (`Some(id)`) or all of them; returns how many.
    pub async fn retry_dead(&self, id: Option<i64>) -> Result<u64, StoreError> {
        dispatch!(self, s => s.retry_dead(id).await)
    }

    /// Discards one dead letter; returns whether there was one.
    pub async fn discard(&self, id: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.discard(id).await)
    }

    /// Deletes finished history (suppressed deliveries included) older than `before`, intake keys
    /// older than `keys_before`, and rule memory past its expiry.
    pub async fn prune(&self, before: Millis, keys_before: Millis) -> Result<u64, StoreError> {
        dispatch!(self, s => s.prune(before, keys_before).await)
    }

    /// Delivery counts by status.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        dispatch!(self, s => s.counts().await)
    }
}

/// RFC 3339 for a Unix-millisecond time.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
