-- Digests: the events a rule collects per key, sent as one message per action when the digest
-- closes (its window ends, its schedule comes, `max_events` is reached, a throttle window
-- reopens, or its rule is removed). Items are written in the intake transaction; closing a
-- digest and creating its deliveries is one transaction.
CREATE TABLE digests (
    id          INTEGER PRIMARY KEY,
    rule        TEXT NOT NULL,
    -- The rule memory cell that points at the open digest of its key (locked while it changes).
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    -- The configuration of its last item.
    config_hash TEXT NOT NULL,
    opened_at   INTEGER NOT NULL,
    closes_at   INTEGER NOT NULL,
    -- Why it closes when it comes due (window, schedule, max_events, hold_release), or why it
    -- closed.
    reason      TEXT NOT NULL,
    items       INTEGER NOT NULL DEFAULT 0,
    -- Events listed in full in its message.
    list        INTEGER NOT NULL,
    closed_at   INTEGER
);
CREATE INDEX digests_due ON digests (closes_at) WHERE closed_at IS NULL;
CREATE INDEX digests_closed ON digests (closed_at) WHERE closed_at IS NOT NULL;

CREATE TABLE digest_items (
    digest_id   INTEGER NOT NULL REFERENCES digests (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    lead_email  TEXT,
    PRIMARY KEY (digest_id, seq)
);
CREATE INDEX digest_items_event ON digest_items (event_id);

-- The digest a delivery sends (its event is the digest's last item).
ALTER TABLE deliveries ADD COLUMN digest_id INTEGER;
