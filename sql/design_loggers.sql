-- Per logger of the existing log: rows, rows with the full distribution, and the actions they mention.
SELECT
    logger,
    count(*)                                  AS rows,
    count(action_probs)                       AS rows_with_probs,
    greatest(max(action) + 1, max(len(action_probs)), 0) AS n_actions
FROM events
WHERE list_contains($loggers, logger)
GROUP BY logger
ORDER BY logger;
