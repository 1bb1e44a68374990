-- Sufficient statistics of the reward per (context, action) in the existing log ($loggers).
SELECT context_id, action, count(*) AS n, sum(reward) AS r1, sum(reward * reward) AS r2
FROM events
WHERE list_contains($loggers, logger)
GROUP BY context_id, action;
