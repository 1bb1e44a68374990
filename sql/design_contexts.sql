-- Contexts of the existing log ($loggers), NULL context_id counting as one context, with their rows.
SELECT context_id, CAST(sum(rows) AS BIGINT) AS rows
FROM event_cells
WHERE ingest_id IN (SELECT ingest_id FROM ingests WHERE list_contains($loggers, logger))
GROUP BY context_id;
