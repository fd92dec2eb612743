-- Rule memory: what rules remember across events (`once`, …), written in the intake
-- transaction.
--
-- A delivery a rule's memory held back is kept with status 'suppressed' and why (`reason`), so
-- that history shows what was not sent.
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS reason TEXT;
-- What a rule's memory adds to the event for this delivery's templates (a JSON object merged
-- over the event: `noise.suppressed`, …).
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS context TEXT;

-- A few numbers per scope (what, for which rule) and key (whose); their meaning is the rule's.
-- A cell past `expires` (when not 0) reads as never written, and pruning deletes it. An
-- instance deciding for a key holds its row (SELECT … FOR UPDATE) until its intake transaction
-- commits: another instance with an event of the same key waits, then reads what it wrote.
CREATE TABLE IF NOT EXISTS memory_cells (
    scope   TEXT NOT NULL,
    key     TEXT NOT NULL,
    a       BIGINT NOT NULL DEFAULT 0,
    b       BIGINT NOT NULL DEFAULT 0,
    c       BIGINT NOT NULL DEFAULT 0,
    expires BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS memory_cells_expires ON memory_cells (expires) WHERE expires > 0;

-- Moments per scope and key, counted over a range (the events of a rolling window).
CREATE TABLE IF NOT EXISTS memory_marks (
    scope   TEXT NOT NULL,
    key     TEXT NOT NULL,
    at      BIGINT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS memory_marks_key ON memory_marks (scope, key, at);
CREATE INDEX IF NOT EXISTS memory_marks_expires ON memory_marks (expires);
