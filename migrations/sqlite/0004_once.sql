-- Memory across events, first part: `once` rules and suppressed deliveries.
--
-- A delivery a rule's memory held back is kept with status 'suppressed' and why (`reason`:
-- once, …), so that history shows what was not sent.
ALTER TABLE deliveries ADD COLUMN reason TEXT;

-- Which event of each (rule, key) a `once` rule fired for, and until when no other fires.
CREATE TABLE noise_once (
    rule     TEXT NOT NULL,
    key      TEXT NOT NULL,
    event_id TEXT NOT NULL,
    until    INTEGER NOT NULL,
    PRIMARY KEY (rule, key)
);
CREATE INDEX noise_once_until ON noise_once (until);
