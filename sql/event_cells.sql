-- The events counted into cells: identical (context_id, position, action, propensity, reward) of one
-- ingest once, with their number of rows. `mval ingest` inserts an ingest's cells into `event_cells`
-- (the filter on ingest_id is applied before grouping); a store of schema version 1 gets them all
-- when first opened for writing, or reads this view as `event_cells` when opened read-only.
CREATE OR REPLACE TEMP VIEW events_counted AS
SELECT ingest_id, context_id, position, action, propensity, reward, count(*) AS rows
FROM events
GROUP BY ALL;
