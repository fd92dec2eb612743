-- switchboard's delivery store (PostgreSQL, shared by several instances). Times are Unix ms.

CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    lead_email  TEXT,
    received_at BIGINT NOT NULL,
    config_hash TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX events_received ON events (received_at);

CREATE TABLE intake_keys (
    key        TEXT PRIMARY KEY,
    event_id   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX intake_keys_created ON intake_keys (created_at);

-- status: pending, sending, delivered, dead, discarded, skipped. A `sending` row belongs to
-- `claimed_by` until `lease_until`; after that any instance may take it over.
CREATE TABLE deliveries (
    id              BIGSERIAL PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    rule            TEXT NOT NULL,
    action_index    BIGINT NOT NULL,
    action_kind     TEXT NOT NULL,
    destination     TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    claimed_by      TEXT,
    lease_until     BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_rule ON deliveries (rule);

CREATE TABLE attempts (
    id          BIGSERIAL PRIMARY KEY,
    delivery_id BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    status_code BIGINT,
    error       TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

-- Live instances and the configuration each one runs (for /api/status).
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    listen       TEXT NOT NULL,
    config_hash  TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
