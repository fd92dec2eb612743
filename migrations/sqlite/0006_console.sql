-- The console: events filtered by campaign, type and lead, newest first, and the webhook
-- requests the router refused (never their bodies).
ALTER TABLE events ADD COLUMN campaign_id TEXT;
-- Events stored before the column, from their canonical payload.
UPDATE events SET campaign_id = CAST(json_extract(payload, '$.campaign.id') AS TEXT)
    WHERE json_valid(payload);
CREATE INDEX events_campaign ON events (campaign_id, received_at);
CREATE INDEX events_type ON events (event_type, received_at);
CREATE INDEX events_lead ON events (lower(lead_email), received_at);

CREATE TABLE refused (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    client TEXT NOT NULL,
    path   TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX refused_at ON refused (at);
