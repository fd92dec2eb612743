-- The running instance and the configuration it runs (for /api/status, as with PostgreSQL).
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    listen       TEXT NOT NULL,
    config_hash  TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
