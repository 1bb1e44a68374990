-- `mval evaluate`: the cells of evaluate_rows.sql (same parameters) split by feature vector, for a reward
-- model on features.
SELECT
    logger,
    CASE WHEN $position_in_context THEN concat_ws('|', context_id, CAST(position AS TEXT))
         ELSE context_id END AS context_key,
    CASE WHEN $by_position THEN position END AS position,
    action,
    propensity,
    reward,
    features,
    CAST(count(*) AS DOUBLE) AS count
FROM events
WHERE $all_loggers OR list_contains(CAST($loggers AS VARCHAR[]), logger)
GROUP BY ALL
ORDER BY ALL;
