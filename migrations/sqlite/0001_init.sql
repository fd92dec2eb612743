-- switchboard's delivery store (SQLite). Times are Unix milliseconds.

-- Every accepted event, canonical form (SmartLead's secret_key already removed).
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    lead_email  TEXT,
    received_at INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX events_received ON events (received_at);

-- What identifies a webhook delivery, so that a repeated one is answered "duplicate".
-- Kept longer than the events themselves (at least 7 days).
CREATE TABLE intake_keys (
    key        TEXT PRIMARY KEY,
    event_id   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX intake_keys_created ON intake_keys (created_at);

-- One row per (event, rule, action).
-- status: pending, sending, delivered, dead, discarded, skipped.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    rule            TEXT NOT NULL,
    action_index    INTEGER NOT NULL,
    action_kind     TEXT NOT NULL,
    destination     TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_rule ON deliveries (rule);

-- Every attempt of every delivery: the history kept with dead letters.
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    started_at  INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    status_code INTEGER,
    error       TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);
