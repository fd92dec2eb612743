-- The configurations deliveries were matched under (rules files and templates as text), by
-- hash: a waiting delivery is sent with the rules that matched it, whatever was reloaded or
-- restarted since. `saved_at` is renewed while a configuration serves.
CREATE TABLE configs (
    hash     TEXT PRIMARY KEY,
    snapshot TEXT NOT NULL,
    saved_at BIGINT NOT NULL
);
