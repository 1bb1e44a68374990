-- `mval evaluate`: the chosen loggers' rows in one scan, identical rows stored once with their multiplicity.
-- $all_loggers or the names in $loggers; $position_in_context: the context key is context_id|position;
-- $by_position: keep the position. Sorted, so that the folds that `mval.evaluate` deals out over each
-- group's rows (seeded) do not depend on scan order. No list column is in the grouping key (a list key,
-- even all NULL, costs a third of the scan): what the rows carry comes from evaluate_shapes.sql, and the
-- features, when a reward model needs them, from evaluate_rows_features.sql (the same cells split by
-- feature vector).
SELECT
    logger,
    CASE WHEN $position_in_context THEN concat_ws('|', context_id, CAST(position AS TEXT))
         ELSE context_id END AS context_key,
    CASE WHEN $by_position THEN position END AS position,
    action,
    propensity,
    reward,
    CAST(count(*) AS DOUBLE) AS count
FROM events
WHERE $all_loggers OR list_contains(CAST($loggers AS VARCHAR[]), logger)
GROUP BY ALL
ORDER BY ALL;
