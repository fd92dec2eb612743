-- The claim reads pending deliveries in (next_attempt_at, id) order up to its limit. With only
-- deliveries_due (status, next_attempt_at), PostgreSQL planned it as a bitmap scan of every
-- pending delivery and a sort whenever its statistics lagged behind a growing backlog (47 ms
-- per claim with 44,000 pending): this index gives the rows in the claim's own order, so a
-- claim stops after `limit` of them however long the backlog. Partial: it holds only what is
-- pending, the part of the table claims read.
-- IF NOT EXISTS: an operator may have built it beforehand with CREATE INDEX CONCURRENTLY,
-- which does not block writes (README, "Several instances on one PostgreSQL").
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (next_attempt_at, id) WHERE status = 'pending';
