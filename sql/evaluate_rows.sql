-- `mval evaluate`: the chosen rows as cells, identical rows once with their multiplicity. Read from
-- `event_cells` (counted at ingest: a few thousand cells instead of millions of rows), or from
-- `events` when $with_features (the cells then split by feature vector too).
-- Rows are grouped by ingest (one logger each, see `ingests`); `mval.evaluate` merges a logger's
-- ingests and sorts the cells (so the seeded folds do not depend on scan order).
-- $all_ingests or the ids in $ingest_ids; $position_in_context: the context key is
-- context_id|position (sql/context_key.sql); $by_position: keep the position.
-- The optional columns are chosen with COLUMNS(lambda ...), which DuckDB resolves when the parameters
-- are bound, whereas `CASE WHEN $by_position THEN position END` would be evaluated row by row. So
-- `position` and `features` are only selected when wanted (absent otherwise); list lengths come from
-- evaluate_shapes.sql.
SELECT
    ingest_id,
    context_key(context_id, position, $position_in_context) AS context_key,  -- sql/context_key.sql
    COLUMNS(lambda c: c IN ('action', 'propensity', 'reward') OR (c = 'position' AND $by_position)
                      OR (c = 'features' AND $with_features)),
    CAST(sum(rows) AS DOUBLE) AS count
FROM (
    SELECT *, CAST(NULL AS DOUBLE[]) AS features FROM event_cells WHERE NOT $with_features
    UNION ALL BY NAME
    SELECT *, 1 AS rows FROM events WHERE $with_features
)
WHERE $all_ingests OR list_contains(CAST($ingest_ids AS INTEGER[]), ingest_id)
GROUP BY ALL;
