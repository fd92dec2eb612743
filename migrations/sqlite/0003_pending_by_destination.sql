-- A claim takes, for each destination with deliveries pending, the earliest due up to the room
-- that destination has left. It finds the destinations by skipping through this index (one
-- lookup per destination) and reads each one's due deliveries from it in due order, so a deep
-- backlog for a destination at its limit (a Slack channel answering 429, say) is not read at
-- every claim; read in due order across destinations, such a backlog was read at every claim
-- to get past it. It replaces deliveries_due (status, next_attempt_at), whose other readers
-- (deliveries by status) use its first column as before: one index to keep up to date per
-- write, as before.
DROP INDEX IF EXISTS deliveries_due;
CREATE INDEX deliveries_due_by_destination ON deliveries (status, destination, next_attempt_at);
