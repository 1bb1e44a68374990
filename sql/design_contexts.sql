-- Contexts of the existing log ($loggers), NULL context_id counting as one context, with their rows.
SELECT context_id, count(*) AS rows
FROM events
WHERE list_contains($loggers, logger)
GROUP BY context_id;
