-- `mval evaluate`: the chosen loggers' rows in one scan, identical rows stored once with their multiplicity.
-- $all_loggers or the names in $loggers; $position_in_context: the context key is context_id|position;
-- $by_position: keep the position; $with_features: keep the features (the cells then split by feature
-- vector). Sorted, so that the folds that `mval.evaluate` deals out over each group's rows (seeded) do not
-- depend on scan order. A list column in the grouping key, even all NULL, costs a third of the scan, so
-- `features` is only selected (COLUMNS, decided when the parameters are bound) when a model needs it, and
-- what the rows carry (list lengths) comes from evaluate_shapes.sql.
SELECT
    logger,
    CASE WHEN $position_in_context THEN concat_ws('|', context_id, CAST(position AS TEXT))
         ELSE context_id END AS context_key,
    CASE WHEN $by_position THEN position END AS position,
    action,
    propensity,
    COLUMNS(lambda c: c = 'reward' OR (c = 'features' AND $with_features)),
    CAST(count(*) AS DOUBLE) AS count
FROM events
WHERE $all_loggers OR list_contains(CAST($loggers AS VARCHAR[]), logger)
GROUP BY ALL
ORDER BY ALL;
