-- Sufficient statistics of the reward per (context, action) in the existing log ($loggers), from the
-- cells counted at ingest (`event_cells`: identical rows once, with their number of rows).
SELECT context_id, action, CAST(sum(rows) AS BIGINT) AS n, sum(rows * reward) AS r1, sum(rows * reward * reward) AS r2
FROM event_cells
WHERE ingest_id IN (SELECT ingest_id FROM ingests WHERE list_contains($loggers, logger))
GROUP BY context_id, action;
