-- Silences: runtime state that keeps the notifications of matching events from going out
-- until `ends_at` (expiring one early sets it to now). `matchers` is a JSON list of
-- [field, value] pairs, all of which must match.
CREATE TABLE silences (
    id         TEXT PRIMARY KEY,
    matchers   TEXT NOT NULL,
    rule       TEXT,
    comment    TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    ends_at    BIGINT NOT NULL
);
CREATE INDEX silences_ends_at ON silences (ends_at);
