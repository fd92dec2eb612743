-- Memory across events, first part: `once` rules and suppressed deliveries.
--
-- A delivery a rule's memory held back is kept with status 'suppressed' and why (`reason`:
-- once, …), so that history shows what was not sent.
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS reason TEXT;

-- Which event of each (rule, key) a `once` rule fired for, and until when no other fires. An
-- instance that takes a key holds its row until its intake transaction commits: another
-- instance with an event of the same key waits for it, then sees the key taken.
CREATE TABLE IF NOT EXISTS noise_once (
    rule     TEXT NOT NULL,
    key      TEXT NOT NULL,
    event_id TEXT NOT NULL,
    until    BIGINT NOT NULL,
    PRIMARY KEY (rule, key)
);
CREATE INDEX IF NOT EXISTS noise_once_until ON noise_once (until);
