-- `mval evaluate`: the chosen rows in one scan, identical rows stored once with their multiplicity.
-- Rows are grouped by ingest (one logger each, see `ingests`) rather than by the logger's name: an
-- integer key hashes faster than text. $all_ingests or the ids in $ingest_ids; $position_in_context:
-- the context key is context_id|position; $by_position: keep the position; $with_features: keep the
-- features (the cells then split by feature vector). `mval.evaluate` merges a logger's ingests and
-- sorts the cells (so the seeded folds do not depend on scan order). A list column in the grouping
-- key, even all NULL, costs a third of the scan, so `features` is only selected (COLUMNS, decided when
-- the parameters are bound) when a model needs it, and list lengths come from evaluate_shapes.sql.
SELECT
    ingest_id,
    CASE WHEN $position_in_context THEN concat_ws('|', context_id, CAST(position AS TEXT))
         ELSE context_id END AS context_key,
    CASE WHEN $by_position THEN position END AS position,
    action,
    propensity,
    COLUMNS(lambda c: c = 'reward' OR (c = 'features' AND $with_features)),
    CAST(count(*) AS DOUBLE) AS count
FROM events
WHERE $all_ingests OR list_contains(CAST($ingest_ids AS INTEGER[]), ingest_id)
GROUP BY ALL;
