-- `mval evaluate`: the chosen loggers' rows in one scan, identical rows stored once with their multiplicity.
-- $all_loggers or the names in $loggers; $position_in_context: the context key is context_id|position;
-- $by_position: keep the position; $with_features: keep the features. Sorted, so that the folds
-- that `mval.evaluate` deals out over each group's rows (seeded) do not depend on scan order.
-- action_probs_len / features_len say what the rows carry (NULL: absent).
SELECT
    logger,
    CASE WHEN $position_in_context THEN concat_ws('|', context_id, CAST(position AS TEXT))
         ELSE context_id END AS context_key,
    CASE WHEN $by_position THEN position END AS position,
    action,
    propensity,
    reward,
    len(action_probs) AS action_probs_len,
    len(features) AS features_len,
    CASE WHEN $with_features THEN features END AS features,
    CAST(count(*) AS DOUBLE) AS count
FROM events
WHERE $all_loggers OR list_contains(CAST($loggers AS VARCHAR[]), logger)
GROUP BY ALL
ORDER BY ALL;
