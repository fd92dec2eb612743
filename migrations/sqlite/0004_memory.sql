-- Rule memory: what rules remember across events (`once`, …), written in the intake
-- transaction.
--
-- A delivery a rule's memory held back is kept with status 'suppressed' and why (`reason`), so
-- that history shows what was not sent.
ALTER TABLE deliveries ADD COLUMN reason TEXT;
-- What a rule's memory adds to the event for this delivery's templates (a JSON object merged
-- over the event: `noise.suppressed`, …).
ALTER TABLE deliveries ADD COLUMN context TEXT;

-- A few numbers per scope (what, for which rule) and key (whose); their meaning is the rule's.
-- A cell past `expires` (when not 0) reads as never written, and pruning deletes it.
CREATE TABLE memory_cells (
    scope   TEXT NOT NULL,
    key     TEXT NOT NULL,
    a       INTEGER NOT NULL DEFAULT 0,
    b       INTEGER NOT NULL DEFAULT 0,
    c       INTEGER NOT NULL DEFAULT 0,
    expires INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, key)
);
CREATE INDEX memory_cells_expires ON memory_cells (expires) WHERE expires > 0;

-- Moments per scope and key, counted over a range (the events of a rolling window).
CREATE TABLE memory_marks (
    scope   TEXT NOT NULL,
    key     TEXT NOT NULL,
    at      INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE INDEX memory_marks_key ON memory_marks (scope, key, at);
CREATE INDEX memory_marks_expires ON memory_marks (expires);
