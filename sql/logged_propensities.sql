-- The distinct (context_id, action, propensity) that logger $logger's rows logged, from the cells counted
-- at ingest: `mval design` compares them with the policy table named like the logger.
SELECT DISTINCT context_id, action, propensity
FROM event_cells
WHERE ingest_id IN (SELECT ingest_id FROM ingests WHERE logger = $logger);
