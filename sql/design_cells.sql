-- Sufficient statistics of the reward per (context, action) in the existing log ($loggers), from the
-- cells counted at ingest (`event_cells`: identical rows once, with their number of rows). The sums are
-- of r - c, c the log's mean reward (`shift`), so that E[r^2] - m^2 does not cancel for large rewards.
WITH chosen AS (
    SELECT * FROM event_cells
    WHERE ingest_id IN (SELECT ingest_id FROM ingests WHERE list_contains($loggers, logger))
), shift AS (
    SELECT coalesce(sum(rows * reward) / sum(rows), 0) AS c FROM chosen
)
SELECT context_id, action, CAST(sum(rows) AS BIGINT) AS n, sum(rows * (reward - c)) AS r1,
       sum(rows * (reward - c) * (reward - c)) AS r2, any_value(c) AS shift
FROM chosen, shift
GROUP BY context_id, action;
